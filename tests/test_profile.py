"""`--profile load`: per-address limits off, everything else as configured; flags and variables win."""

from __future__ import annotations

import argparse

import pytest

from server.abuse.ratelimit import parse_limits
from server.config import Config, ConfigError, add_serve_arguments, from_args


def parse(*argv: str, env: dict[str, str] | None = None) -> Config:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return from_args(parser.parse_args(list(argv)), env or {})


def test_load_profile_turns_off_per_address_limits_only() -> None:
    config = parse("--profile", "load")
    assert config.profile == "load" and config.max_conns_per_ip == 0
    limits = parse_limits(config.rate_limits)
    assert not any(key.endswith(".ip") for key in limits)  # every per-address bucket off
    assert {"danmaku.conn", "danmaku.user", "join.user", "dm.user"} <= set(limits)  # the rest stays
    assert config.max_conns_per_user == parse().max_conns_per_user and config.contact_filter


def test_variables_and_flags_win_over_the_profile() -> None:
    env = {"LIVEROOM_PROFILE": "load", "LIVEROOM_MAX_CONNS_PER_IP": "7"}
    assert parse(env=env).max_conns_per_ip == 7
    assert parse("--max-conns-per-ip", "9", env=env).max_conns_per_ip == 9
    assert parse().max_conns_per_ip == 100  # no profile: the default


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        parse(env={"LIVEROOM_PROFILE": "fast"})

"""Room analytics: hooks buffer facts in process, a store keeps them, a pure aggregator reads them."""

pytest_plugins = ["o2chain.testing"]

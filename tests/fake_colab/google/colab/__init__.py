"A stand-in for Colab's `google.colab` package, for tests: only what har_colab and the tutorials use."

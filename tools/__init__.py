"""Client-side tools: the Python clients of the server and the benchmarks behind ``halo bench``."""

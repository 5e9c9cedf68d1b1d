"""Settings for benchmark runs: the platform's own, with bench-only URLs (the baselines' views) added."""
from project.settings import *  # noqa: F401,F403 - the platform's settings unchanged, only extended

ROOT_URLCONF = "bench.urls"

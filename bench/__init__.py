"""xzatoma's benchmark suite: the same workloads on xzatoma, pydantic-ai and the OpenAI Agents SDK.

Run it with ``make bench`` (or ``python -m bench --help``); ``bench/README.md`` says how to read
the tables.
"""

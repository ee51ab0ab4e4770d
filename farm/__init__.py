"""Control plane of the build farm: parse, plan, submit and track builds."""

__version__ = "0.1.0"

"""Pipeline logic driven by the noxfile: fetch, gate, build, push, release, terraform."""

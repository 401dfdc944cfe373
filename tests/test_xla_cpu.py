"""The XLA:CPU flags the command sets before JAX starts."""

import jax.numpy as jnp
import pytest

from practise_jax import xla_cpu


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(xla_cpu, "_backends_started", lambda: False)


def test_adds_every_flag_to_an_empty_environment(fresh):
    environ = {}
    added = xla_cpu.use_fast_flags(environ)
    assert sorted(a.split("=", 1)[0] for a in added) == sorted(xla_cpu.FAST_FLAGS)
    assert environ["XLA_FLAGS"] == " ".join(added)


def test_keeps_the_users_own_setting_and_other_flags(fresh):
    environ = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --xla_dump_to=/tmp/x"}
    added = xla_cpu.use_fast_flags(environ)
    assert [a.split("=", 1)[0] for a in added] == ["--xla_cpu_experimental_ynn_fusion_type",
                                                   "--xla_force_host_platform_device_count"]
    assert environ["XLA_FLAGS"].startswith("--xla_cpu_multi_thread_eigen=true --xla_dump_to=/tmp/x ")
    assert "--xla_cpu_multi_thread_eigen=false" not in environ["XLA_FLAGS"]


def test_opt_out_and_repeated_calls_add_nothing(fresh):
    assert xla_cpu.use_fast_flags({xla_cpu.OPT_OUT: "0"}) == []
    environ = {}
    xla_cpu.use_fast_flags(environ)
    assert xla_cpu.use_fast_flags(environ) == []


def test_one_cpu_device_per_usable_core():
    import os

    assert xla_cpu.FAST_FLAGS["--xla_force_host_platform_device_count"] == str(len(os.sched_getaffinity(0)))


def test_nothing_is_added_once_jax_has_started():
    jnp.ones(1).block_until_ready()
    environ = {}
    assert xla_cpu.use_fast_flags(environ) == [] and environ == {}

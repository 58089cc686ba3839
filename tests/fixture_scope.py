"""Fixture scope that keeps mutation testing honest.

mutmut learns which tests reach which function by running each test once, and later runs
a mutant only against those tests. A module-scoped fixture that calls the code under test
is computed inside the first test that asks for it, so the tests that only read its result
look as if they never reached that code, and a mutant they would catch "survives" (the
80/10/10 replacement split checked on masks a fixture computed: found in the masking run
of #21). Under mutmut (MUTANT_UNDER_TEST set, in its first pass too) such fixtures are
computed per test; otherwise once per module, as before.
"""
import os


def module_unless_mutmut(fixture_name: str, config) -> str:  # pylint: disable=unused-argument
  """A pytest dynamic scope: "function" under mutmut, else "module"."""
  return "function" if os.environ.get("MUTANT_UNDER_TEST") else "module"

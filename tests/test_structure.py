"""The package's structure (issue 9): no import cycle, no private name used across modules,
one registry that every exported CAM class is in and that every consumer reads."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest
import torch
from models import SmallCNN
from torch import nn

import captum_cam_ext as cce
from captum_cam_ext import registry

PACKAGE = Path(cce.__file__).resolve().parent
NAME = "captum_cam_ext"


def _modules() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path) -> List[Tuple[str, List[str], int]]:
    """(imported module, imported names, line) for every import, function-level ones included."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, is_package, node)
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in MODULES:  # `from pkg import submodule`
                    found.append((sub, [], node.lineno))
                else:
                    found.append((mod, [alias.name], node.lineno))
    return found


def _graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for mod, _, _ in _imports(name, path):
            if mod in MODULES and mod != name:
                graph[name].add(mod)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle_lazy_imports_included():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_the_top_level_package():
    offenders = [
        f"{name}:{line}"
        for name, path in MODULES.items()
        if name != NAME
        for mod, _, line in _imports(name, path)
        if mod == NAME
    ]
    assert offenders == []


def test_no_private_name_is_imported_from_another_package_module():
    offenders = []
    for name, path in MODULES.items():
        for mod, names, line in _imports(name, path):
            if mod in MODULES and mod != name:
                offenders += [f"{name}:{line} imports {mod}.{n}" for n in names if n.startswith("_")]
    assert offenders == []


def _private_attribute_uses(tree: ast.AST) -> List[Tuple[int, str]]:
    """``obj._name`` where ``obj`` is not ``self`` / ``cls`` itself (e.g. ``self.base._x``, ``mod._f``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append((node.lineno, ast.unparse(node)))
    return found


#: private attributes of *other libraries* that the package uses on purpose
THIRD_PARTY_PRIVATE = {
    "_forward_hooks",  # torch.nn.Module internals (hook bookkeeping)
    "_forward_pre_hooks",
    "_backward_hooks",
    "_BatchNorm",  # torch.nn.modules.batchnorm._BatchNorm: the BatchNorm base class
    "_C",
    "_avg_pooling",  # efficientnet-lite-pytorch's EfficientNet submodule names
    "_fc",
    "_dropout",
    "_blocks",
    "_conv_head",
    "_bn1",
    "_swish",
}


def test_no_private_attribute_of_another_package_object_is_used():
    offenders = []
    for name, path in MODULES.items():
        for line, expr in _private_attribute_uses(ast.parse(path.read_text())):
            if expr.rsplit(".", 1)[-1] not in THIRD_PARTY_PRIVATE:
                offenders.append(f"{name}:{line} {expr}")
    assert offenders == []


# ---------------------------------------------------------------------------------------------
# One registry
# ---------------------------------------------------------------------------------------------


def _exported_cam_classes() -> List[type]:
    from captum.attr._utils.attribution import LayerAttribution

    skip = {cce.CamAttribution, cce.GradientCamAttribution, cce.PerturbationCamAttribution, cce.MultiCam}
    out = []
    for n in cce.__all__:
        obj = getattr(cce, n)
        if inspect.isclass(obj) and obj not in skip and issubclass(obj, LayerAttribution):
            out.append(obj)
    return out


def test_every_exported_cam_class_is_registered():
    registered = set(cce.methods().values())
    missing = [c.__name__ for c in _exported_cam_classes() if c not in registered]
    assert missing == []
    assert len(cce.methods()) >= 11


def test_names_and_aliases_resolve_to_one_class():
    assert registry.method_class("Grad-CAM++") is cce.LayerGradCamPlusPlus
    assert registry.method_class("gradcam_pp") is cce.LayerGradCamPlusPlus
    assert registry.method_class("LayerScoreCam") is cce.LayerScoreCam
    assert registry.canonical_method_name("conceptorcam") == "conceptor"
    with pytest.raises(ValueError, match="Did you mean gradcam"):
        registry.method_class("gradcm")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method(type("Other", (cce.LayerGradCam,), {"name": "gradcam"}))


class LayerMaxGradCam(cce.GradientCamAttribution):
    """A new CAM for the test: channel weights are the largest gradient of each channel."""

    name = "maxgradcam"

    def cam_weights(self, activations, gradients):
        return gradients.amax(dim=(2, 3), keepdim=True)


@pytest.fixture
def registered_new_method():
    registry.register_method(LayerMaxGradCam, aliases=("max-grad-cam",))
    try:
        yield LayerMaxGradCam
    finally:
        registry.unregister_method("maxgradcam")
    assert "maxgradcam" not in cce.methods()


def test_a_new_registered_method_reaches_multicam_the_cli_and_evaluate(registered_new_method, tmp_path):
    from torch.utils.data import TensorDataset

    from captum_cam_ext.cli import build_parser
    from captum_cam_ext.evaluation import evaluate

    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.randn(4, 3, 8, 8)
    assert registry.method_kind(LayerMaxGradCam) == "shared_pass"
    assert "maxgradcam" in cce.methods("shared_pass")
    multi = cce.MultiCam(m, m.features, methods=["gradcam", "max-grad-cam"]).attribute(x, target=1)
    torch.testing.assert_close(multi["maxgradcam"], LayerMaxGradCam(m, m.features).attribute(x, target=1))
    assert "maxgradcam" in build_parser().format_help() or "maxgradcam" in _explain_help(build_parser())
    res = evaluate(m, m.features, ["maxgradcam"], TensorDataset(x), metrics=("average_drop",))
    assert list(res.means) == ["maxgradcam"] and res.n == 4


def _explain_help(parser) -> str:
    import argparse

    for action in parser._actions:  # the subcommands' own help
        if isinstance(action, argparse._SubParsersAction):
            return "\n".join(p.format_help() for p in action.choices.values())
    return ""


def test_multicam_takes_every_shared_pass_method():
    torch.manual_seed(1)
    m = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    names = list(cce.methods("shared_pass"))
    out = cce.MultiCam(m, m.features, methods=names).attribute(x, target=[0, 2])
    for n in names:
        alone = registry.create_method(n, m, m.features).attribute(x, target=[0, 2])
        again = registry.create_method(n, m, m.features).attribute(x, target=[0, 2])
        if torch.equal(alone, again):  # deterministic methods (random baselines are compared elsewhere)
            torch.testing.assert_close(out[n], alone, msg=n)
        else:
            assert out[n].shape == alone.shape


def test_create_method_passes_batch_size_only_where_it_is_taken():
    m = SmallCNN().eval()
    assert registry.create_method("scorecam", m, m.features, batch_size=5).batch_size == 5
    assert isinstance(registry.create_method("gradcam", m, m.features, batch_size=5), cce.LayerGradCam)


def test_perturbation_methods_are_captum_perturbation_attributions():
    from captum.attr._utils.attribution import GradientAttribution, PerturbationAttribution

    m = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    for cls in cce.methods("perturbation").values():
        assert issubclass(cls, PerturbationAttribution) and not issubclass(cls, GradientAttribution), cls
    for cls in cce.methods("shared_pass").values():
        assert issubclass(cls, cce.CamAttribution)
    del m

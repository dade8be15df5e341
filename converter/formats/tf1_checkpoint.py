"""TF1 checkpoints (.meta graph + variables): the format the seeds' models were trained and saved in.

The path to a convertible graph: import the meta graph, restore the variables, pin training switches
(``phase_train``, ``is_training``, ``keep_prob``...) to inference, freeze the variables into constants,
fold the conditionals those switches drove so the training branches (dropout noise, batch statistics)
disappear, then keep only what the outputs need and hand the frozen GraphDef to graphdef.graph_source.

Both kinds of TF conditionals are folded: TF1's Switch/Merge (what the seeds' graphs hold) and TF2's
If/StatelessIf (what ``tf.compat.v1.cond`` builds under TF2), whose chosen branch is inlined.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelite.converter.formats import FormatError
from facelite.converter.formats.graphdef import (
    TRAINING_SWITCHES,
    graph_source,
    inference_graph,
    pin_training_switches,
)
from facelite.converter.recipe import GraphSource

log = logging.getLogger(__name__)

# Ops that only make sense while training: never an output, never allowed in a frozen inference graph.
RANDOM_OPS = frozenset(
    {
        "RandomUniform",
        "RandomUniformInt",
        "RandomStandardNormal",
        "TruncatedNormal",
        "RandomShuffle",
        "Multinomial",
        "StatelessRandomUniformV2",
        "StatelessRandomNormalV2",
        "StatelessRandomUniformFullIntV2",
        "StatelessTruncatedNormalV2",
        "StatelessRandomGetKeyCounter",
        "StatelessRandomGetKeyCounterAlg",
    }
)
VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "ReadVariableOp", "Assign", "AssignVariableOp"})
_NOT_OUTPUTS = frozenset(
    {"Const", "NoOp", "Assert", "Placeholder", "PlaceholderWithDefault", "SaveV2", "RestoreV2", "MergeV2Checkpoints"}
)
# Saver, gradient and initialiser scopes (a second Saver lives under save_1/, and so on).
_NOT_OUTPUT_NAMES = re.compile(r"^(save(_\d+)?|gradients(_\d+)?|init(_\d+)?|report_uninitialized\w*)(/|$)")
_MISSING_KEY = re.compile(r"Key (\S+) not found in checkpoint")
_CONDITIONALS = frozenset({"Switch", "RefSwitch", "Merge", "RefMerge", "If", "StatelessIf"})


@dataclass(frozen=True)
class FrozenCheckpoint:
    """A checkpoint frozen for inference: no variables, no training switches, no training branches."""

    graph_def: Any  # tf.compat.v1.GraphDef
    inputs: list[str]
    outputs: list[str]
    pinned: list[str]  # training switches that were pinned to inference
    folded: int  # conditionals resolved by a pinned switch
    meta: Path
    prefix: str


# -- locating the files ----------------------------------------------------------------------------
def resolve(path: Path) -> tuple[Path, str]:
    """(meta graph file, checkpoint prefix) for a checkpoint directory or a ``.meta`` file."""
    import tensorflow as tf

    path = Path(path)
    if path.is_dir():
        metas = sorted(path.glob("*.meta"))
        if not metas:
            raise FormatError("no .meta graph file in the checkpoint directory", str(path))
        try:
            state = tf.train.get_checkpoint_state(str(path))
        except (tf.errors.OpError, ValueError):
            state = None
        # By name inside this directory: Savers write absolute paths, which go stale when a
        # checkpoint folder is copied or moved (they would silently load the original).
        latest = path / Path(state.model_checkpoint_path).name if state and state.model_checkpoint_path else None
        if latest is not None and latest.with_name(latest.name + ".meta").is_file():
            meta = latest.with_name(latest.name + ".meta")
        elif len(metas) == 1:
            meta = metas[0]
        else:
            names = ", ".join(m.name for m in metas)
            raise FormatError(f"several .meta files ({names}) and no 'checkpoint' index naming one", str(path))
    elif path.suffix == ".meta":
        if not path.is_file():
            raise FormatError("meta graph file not found", str(path))
        meta = path
    elif path.with_name(path.name + ".meta").is_file():  # a checkpoint prefix such as model.ckpt-1000
        meta = path.with_name(path.name + ".meta")
    else:
        raise FormatError("not a TF1 checkpoint (expected a directory, a .meta file or a checkpoint prefix)", str(path))
    prefix = str(meta)[: -len(".meta")]
    if not (Path(prefix + ".index").is_file() or Path(prefix).is_file()):
        raise FormatError(f"checkpoint data for {Path(prefix).name} not found (no .index file)", str(meta.parent))
    return meta, prefix


# -- conditionals ----------------------------------------------------------------------------------
def _split(ref: str) -> tuple[str, int, bool]:
    """'^name' / 'name:3' / 'name' -> (name, port, is_control)."""
    if ref.startswith("^"):
        return ref[1:], -1, True
    name, _, port = ref.partition(":")
    return name, int(port) if port else 0, False


def _const_bool(nodes: dict[str, Any], ref: str) -> bool | None:
    """The value of a boolean constant, looking through Identity chains (a pinned switch)."""
    import tensorflow as tf

    name = _split(ref)[0]
    for _ in range(64):
        node = nodes.get(name)
        if node is None:
            return None
        if node.op == "Const":
            if node.attr["dtype"].type != tf.bool.as_datatype_enum:
                return None
            value = tf.make_ndarray(node.attr["value"].tensor)
            return bool(value.reshape(-1)[0]) if value.size == 1 else None
        if node.op not in ("Identity", "Snapshot"):
            return None
        name = _split(node.input[0])[0]
    return None


def _fold_switches(graph_def: Any) -> int:
    """Resolve TF1 Switch/Merge pairs whose predicate is constant; return how many Switches were folded.

    A Switch forwards its data to output 1 when the predicate is true, else to output 0; everything fed
    only by the other output never runs (it is "dead"), and a Merge passes on its one live input.
    """
    nodes = {n.name: n for n in graph_def.node}
    live_port = {}
    for n in graph_def.node:
        if n.op in ("Switch", "RefSwitch"):
            value = _const_bool(nodes, n.input[1])
            if value is not None:
                live_port[n.name] = int(value)
    if not live_port:
        return 0

    dead: set[str] = set()

    def tensor_dead(ref: str) -> bool:
        name, port, control = _split(ref)
        if name in dead:
            return True
        return not control and name in live_port and port != live_port[name]

    changed = True
    while changed:
        changed = False
        for n in graph_def.node:
            if n.name in dead:
                continue
            if n.op in ("Merge", "RefMerge"):
                data = [i for i in n.input if not i.startswith("^")]
                is_dead = bool(data) and all(tensor_dead(i) for i in data)
            else:
                is_dead = any(tensor_dead(i) for i in n.input)
            if is_dead:
                dead.add(n.name)
                changed = True

    renames: dict[str, str] = {}  # 'switch:1' -> 'switch' once the Switch is an Identity
    value_index: list[Any] = []
    for n in graph_def.node:
        if n.name in dead:
            continue
        if n.name in live_port:
            renames[f"{n.name}:{live_port[n.name]}"] = n.name
            _make_identity(n, n.input[0], [i for i in n.input if i.startswith("^")])
        elif n.op in ("Merge", "RefMerge"):
            live = [i for i in n.input if not i.startswith("^") and not tensor_dead(i)]
            if len(live) == 1:
                data = [i for i in n.input if not i.startswith("^")]
                value_index.append((n.name, data.index(live[0])))
                _make_identity(n, live[0], [i for i in n.input if i.startswith("^") and not tensor_dead(i)])
    kept = [n for n in graph_def.node if n.name not in dead]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    for name, index in value_index:
        _add_value_index(graph_def, name, index, renames)
    _rewire(graph_def, renames)
    return len(live_port)


def _make_identity(node: Any, data: str, controls: Sequence[str]) -> None:
    dtype = node.attr["T"]
    node.op = "Identity"
    keep = type(dtype)()
    keep.CopyFrom(dtype)
    node.attr.clear()
    node.attr["T"].CopyFrom(keep)
    del node.input[:]
    node.input.extend([data, *controls])


def _add_value_index(graph_def: Any, merge: str, index: int, renames: dict[str, str]) -> None:
    """A folded Merge's second output (which input arrived) becomes a constant, should anything read it."""
    import tensorflow as tf

    if not any(i == f"{merge}:1" for n in graph_def.node for i in n.input):
        return
    const = graph_def.node.add()
    const.name = f"{merge}/value_index"
    const.op = "Const"
    const.attr["dtype"].type = tf.int32.as_datatype_enum
    const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(index, dtype=tf.int32))
    renames[f"{merge}:1"] = const.name


def _canonical(ref: str) -> str:
    """GraphDef spells output 0 without a port; graph_util's passes only match that spelling."""
    return ref[: -len(":0")] if ref.endswith(":0") else ref


def _rewire(graph_def: Any, renames: dict[str, str]) -> None:
    if not renames:
        return
    renames = {k: _canonical(v) for k, v in renames.items()}
    for n in graph_def.node:
        for k, ref in enumerate(n.input):
            if ref.startswith("^"):
                target = renames.get(ref[1:]) or renames.get(f"{ref[1:]}:0")
                if target is not None:
                    n.input[k] = "^" + _split(target)[0]
            else:
                key = ref if ":" in ref else f"{ref}:0"
                if key in renames:
                    n.input[k] = renames[key]
                elif ref in renames:
                    n.input[k] = renames[ref]


def _inline_ifs(graph_def: Any) -> int:
    """Replace TF2 If/StatelessIf nodes whose predicate is constant by the body of the branch taken."""
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

    library = {f.signature.name: f for f in graph_def.library.function}
    count = 0
    while True:
        nodes = {n.name: n for n in graph_def.node}
        target = None
        for n in graph_def.node:
            if n.op in ("If", "StatelessIf"):
                value = _const_bool(nodes, n.input[0])
                if value is not None:
                    target = (n, value)
                    break
        if target is None:
            return count
        node, value = target
        branch = node.attr["then_branch" if value else "else_branch"].func.name
        if branch not in library:
            raise FormatError(f"conditional {node.name} calls function {branch!r}, missing from the graph library")
        fdef = library[branch]
        body, flat = function_def_to_graph_def(fdef)
        prefix = f"{node.name}/{'then' if value else 'else'}/"
        args = [i for i in node.input[1:] if not i.startswith("^")]
        controls = [i for i in node.input if i.startswith("^")]
        arg_names = [a.name for a in fdef.signature.input_arg]
        new_nodes = []
        for b in body.node:
            copy = type(b)()
            copy.CopyFrom(b)
            copy.name = prefix + b.name
            if b.name in arg_names and b.op == "Placeholder":
                copy.op = "Identity"
                dtype = b.attr["dtype"].type
                copy.attr.clear()
                copy.attr["T"].type = dtype
                del copy.input[:]
                copy.input.extend([args[arg_names.index(b.name)], *controls])
            else:
                del copy.input[:]
                for ref in b.input:
                    copy.input.append(f"^{prefix}{ref[1:]}" if ref.startswith("^") else _canonical(prefix + ref))
            new_nodes.append(copy)
        renames = {}
        for k, out in enumerate(fdef.signature.output_arg):
            ret = fdef.ret[out.name]
            tensor = flat.get(ret, ret)  # a returned argument has no node:output:index form
            renames[f"{node.name}:{k}"] = prefix + (tensor if ":" in tensor else f"{tensor}:0")
        kept = [n for n in graph_def.node if n.name != node.name]
        del graph_def.node[:]
        graph_def.node.extend(kept + new_nodes)
        _rewire(graph_def, renames)
        count += 1


def fold_conditionals(graph_def: Any) -> int:
    """Fold every conditional decided by a constant predicate (in place); return how many were folded."""
    total = 0
    while True:
        n = _inline_ifs(graph_def) + _fold_switches(graph_def)
        if n == 0:
            return total
        total += n


# -- inputs and outputs ----------------------------------------------------------------------------
def _ancestors(graph_def: Any, outputs: Sequence[str]) -> set[str]:
    nodes = {n.name: n for n in graph_def.node}
    seen: set[str] = set()
    stack = [_split(o)[0] for o in outputs]
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        stack.extend(_split(i)[0] for i in nodes[name].input)
    return seen


def _is_machinery(node: Any) -> bool:
    """Saving, initialising, optimising and summarising nodes: never a model output."""
    op = node.op
    return (
        op in _NOT_OUTPUTS
        or op in VARIABLE_OPS
        or op in RANDOM_OPS
        or op in ("VarIsInitializedOp", "IsVariableInitialized")
        or op.startswith(("Apply", "ResourceApply"))
        or "Summary" in op
        or bool(_NOT_OUTPUT_NAMES.match(node.name))
    )


def image_placeholders(graph_def: Any) -> list[str]:
    """Float placeholders shaped like an image batch (rank 4); all float placeholders if none is."""
    floats = [
        n
        for n in graph_def.node
        if n.op in ("Placeholder", "PlaceholderWithDefault")
        and n.name.split("/")[-1] not in TRAINING_SWITCHES
        and n.attr["dtype"].type == 1  # DT_FLOAT
    ]
    rank4 = [n.name for n in floats if len(n.attr["shape"].shape.dim) == 4]
    return rank4 or [n.name for n in floats]


def discover_outputs(graph_def: Any, inputs: Sequence[str]) -> list[str]:
    """Nodes nothing consumes that are computed from the image inputs alone.

    A checkpoint graph also ends in a loss (it reads the labels placeholder), a train op, saver and
    initialiser nodes and leftovers of the pinned switch (they read no input): none of them is an output.
    """
    consumed = {_split(i)[0] for n in graph_def.node for i in n.input}
    placeholders = {n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderWithDefault")}
    wanted = set(inputs)
    found = []
    for n in graph_def.node:
        if n.name in consumed or _is_machinery(n):
            continue
        feeds = _ancestors(graph_def, [n.name]) & placeholders
        if feeds and feeds <= wanted:
            found.append(n.name)
    return found


# -- the format ------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def freeze(
    path: Path, *, outputs: Sequence[str] | None = None, inputs: Sequence[str] | None = None
) -> FrozenCheckpoint:
    """Restore a TF1 checkpoint and freeze it for inference (see the module docstring for the steps)."""
    import tensorflow as tf

    meta, prefix = resolve(path)
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
        except (OSError, ValueError, KeyError, tf.errors.OpError) as exc:
            raise FormatError(f"cannot import the meta graph: {_first_line(exc)}", str(meta)) from None
        except Exception as exc:  # protobuf DecodeError and friends: a file that is not a MetaGraphDef
            raise FormatError(f"not a TF1 meta graph ({type(exc).__name__}: {_first_line(exc)})", str(meta)) from None
        if saver is None:
            raise FormatError(
                "the meta graph has no variables to restore (is it a frozen graph? use --source *.pb)", str(meta)
            )
    with tf.compat.v1.Session(graph=graph) as sess:
        try:
            saver.restore(sess, prefix)
        except tf.errors.NotFoundError as exc:
            keys = sorted(set(_MISSING_KEY.findall(str(exc))))
            what = f"variable(s) {keys} missing from the checkpoint" if keys else _first_line(exc)
            raise FormatError(f"checkpoint does not match the graph: {what}", prefix) from None
        except (tf.errors.OpError, ValueError) as exc:
            raise FormatError(f"cannot restore the checkpoint: {_first_line(exc)}", prefix) from None
        graph_def = graph.as_graph_def()
        pinned = pin_training_switches(graph_def)
        names = {n.name for n in graph_def.node}
        ins = [_split(i)[0] for i in (inputs or image_placeholders(graph_def))]
        missing = [i for i in ins if i not in names]
        if missing:
            raise FormatError(
                f"input tensor(s) {missing} not in the checkpoint graph", str(meta), "check --inputs names"
            )
        outs = [_split(o)[0] for o in (outputs or discover_outputs(graph_def, ins))]
        if not outs:
            raise FormatError("no output tensor found in the checkpoint graph", str(meta), "name it with --outputs")
        missing = [o for o in outs if o not in names]
        if missing:
            raise FormatError(
                f"output tensor(s) {missing} not in the checkpoint graph", str(meta), "check --outputs names"
            )
        try:
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(sess, graph_def, outs)
        except (tf.errors.OpError, ValueError, KeyError) as exc:
            raise FormatError(f"cannot freeze the variables: {_first_line(exc)}", prefix) from None
    folded = fold_conditionals(frozen)
    frozen = inference_graph(frozen, outs)
    used = {n.name for n in frozen.node}
    unused = [i for i in ins if i not in used]
    if unused and inputs:
        raise FormatError(f"input tensor(s) {unused} are not used by outputs {outs}", str(meta), "check --inputs names")
    ins = [i for i in ins if i in used]
    if not ins:
        raise FormatError(f"outputs {outs} do not depend on any image input", str(meta), "name it with --inputs")
    # Outputs that read another placeholder (labels, a learning rate) cannot run on images alone.
    foreign = sorted({n.name for n in frozen.node if n.op in ("Placeholder", "PlaceholderWithDefault")} - set(ins))
    if foreign:
        raise FormatError(
            f"outputs {outs} also need placeholder(s) {foreign}",
            str(meta),
            "choose outputs computed from the image only",
        )
    leftovers = sorted({n.op for n in frozen.node if n.op in RANDOM_OPS | VARIABLE_OPS})
    if leftovers:
        switches = ", ".join(TRAINING_SWITCHES)
        raise FormatError(
            f"training-only ops {leftovers} still reach outputs {outs} after freezing",
            str(meta),
            f"the graph's training switch must be a placeholder named one of: {switches}",
        )
    conditionals = sum(n.op in _CONDITIONALS for n in frozen.node)
    if conditionals:
        # Data-dependent conditionals are legitimate; the converter decides whether the device can run them.
        log.warning("%s keeps %d conditional op(s) not decided by a training switch", meta.name, conditionals)
    log.info(
        "froze %s: pinned %s, folded %d conditional(s), %d nodes",
        meta.name,
        pinned or "no switch",
        folded,
        len(frozen.node),
    )
    return FrozenCheckpoint(frozen, ins, outs, pinned, folded, meta, prefix)


def load_graph(
    path: Path,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> GraphSource:
    """A GraphSource from a TF1 checkpoint (a directory with .meta + checkpoint files, or the .meta file)."""
    frozen = freeze(Path(path), outputs=outputs, inputs=inputs)
    return graph_source(frozen.graph_def, frozen.inputs, frozen.outputs, input_shape, where=str(frozen.meta))

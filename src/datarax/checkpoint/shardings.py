"""The sharding of an array this process holds whole, as a JSON value, and back.

A ``jax.Array`` spread over several devices of this process only (fully addressable, as a
batch sharded over the local devices is) is saved like a host array: its data, fetched
from its shards, goes into the process's document or ``process_<i>.bin``, and its
``NamedSharding`` into the array entry (``"sharding"``), so that a restore without a target
puts it back on the same devices, laid out the same way. With a target, the target leaf's
sharding is used instead (any mesh, any device count).

Only shardings that can be written down exactly are described (a ``NamedSharding`` whose
spec names mesh axes, with no ``unreduced``/``reduced`` axes); for any other, and for
arrays spread over several processes, :func:`describe` returns ``None`` and the array goes
through Orbax's array serialization, as before.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from datarax.checkpoint.arrays import progression, wrapped
from datarax.checkpoint.errors import MetadataCheckpointError

_KEYS = {"mesh_shape", "axis_names", "axis_types", "device_ids", "spec", "memory_kind"}
_AXIS_TYPES = tuple(jax.sharding.AxisType.__members__)
_MAX_DEVICES = 1 << 16


def describe(value: jax.Array) -> dict[str, Any] | None:
    """The ``"sharding"`` entry of a fully addressable array on several devices, or ``None``
    where its sharding cannot be written down exactly (the array then goes through Orbax).

    Examples:
        >>> import jax
        >>> from datarax.checkpoint.shardings import describe
        >>> describe(jax.numpy.arange(4)) is None  # one device: a plain host array
        True
    """
    sharding = value.sharding
    if (
        not value.is_fully_addressable
        or len(sharding.device_set) < 2
        or not isinstance(sharding, NamedSharding)
        or not isinstance(sharding.mesh, Mesh)
        or sharding.spec.unreduced
        or sharding.spec.reduced
    ):
        return None
    spec: list[Any] = []
    for part in sharding.spec:
        if part is None or type(part) is str:
            spec.append(part)
        elif type(part) is tuple and all(type(a) is str for a in part):
            spec.append(list(part))
        else:  # PartitionSpec.UNCONSTRAINED, or anything newer
            return None
    mesh = sharding.mesh
    return {
        "mesh_shape": list(mesh.devices.shape),
        "axis_names": list(mesh.axis_names),
        "axis_types": [t.name for t in mesh.axis_types],
        "device_ids": [int(i) for i in mesh.device_ids.reshape(-1)],
        "spec": spec,
        "memory_kind": sharding.memory_kind,
    }


def _names(value: Any) -> bool:
    return type(value) is list and all(type(a) is str and a for a in value)


def check(entry: Any, shape: list[int]) -> str | None:
    """Why ``entry`` is not a ``"sharding"`` entry :func:`describe` writes for an array of
    ``shape``, or ``None``."""
    if type(entry) is not dict or set(entry) != _KEYS:
        return f"malformed sharding {str(entry)[:60]!r}"
    shape, names, ids = entry["mesh_shape"], entry["axis_names"], entry["device_ids"]
    if (
        type(shape) is not list
        or not 0 < len(shape) <= 32
        or not all(type(n) is int and 0 < n <= _MAX_DEVICES for n in shape)
        or not _names(names)
        or len(names) != len(shape)
        or len(set(names)) != len(names)
        or type(entry["axis_types"]) is not list
        or len(entry["axis_types"]) != len(shape)
        or not all(t in _AXIS_TYPES for t in entry["axis_types"])
        or type(ids) is not list
        or not all(type(i) is int and i >= 0 for i in ids)
        or len(ids) != int(np.prod(shape, dtype=object))
        or len(set(ids)) != len(ids)
        or not (entry["memory_kind"] is None or type(entry["memory_kind"]) is str)
        or type(entry["spec"]) is not list
    ):
        return "malformed sharding (mesh, device ids or memory kind)"
    used: list[str] = []
    for part in entry["spec"]:
        if type(part) is str:
            used.append(part)
        elif part is not None:
            used.extend(part if _names(part) else [""])
    if (
        len(entry["spec"]) > len(shape)
        or not set(used) <= set(names)
        or len(set(used)) != len(used)
    ):
        return f"malformed sharding spec {str(entry['spec'])[:60]!r} for shape {shape}"
    return None


def rebuild(entry: dict[str, Any], where: str) -> NamedSharding:
    """The ``NamedSharding`` a :func:`check`-ed entry describes, on this process's devices.

    Raises:
        MetadataCheckpointError: A device it names is not one of this process's, or JAX
            refuses the mesh or spec.
    """
    local = {d.id: d for d in jax.local_devices()}
    missing = [i for i in entry["device_ids"] if i not in local]
    if missing:
        raise MetadataCheckpointError(
            f"{where}: saved sharded over devices {entry['device_ids'][:16]}, but this "
            f"process has no device {missing[:8]} (it has {len(local)} devices). Restore "
            "with a target whose leaves carry the sharding to restore onto: "
            "MetadataRestore(target), a jax.ShapeDtypeStruct with a sharding will do."
        )
    devices = np.array([local[i] for i in entry["device_ids"]], dtype=object)
    types = tuple(jax.sharding.AxisType[t] for t in entry["axis_types"])
    spec = PartitionSpec(*(tuple(p) if type(p) is list else p for p in entry["spec"]))
    try:
        mesh = Mesh(devices.reshape(entry["mesh_shape"]), tuple(entry["axis_names"]), types)
        return NamedSharding(mesh, spec, memory_kind=entry["memory_kind"])
    except (TypeError, ValueError) as e:
        raise MetadataCheckpointError(f"{where}: cannot rebuild its sharding ({e}).") from e


def without_shardings(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Metadata document whose arrays name no sharding: decoded, they come back
    on the default device (``datarax-checkpoint verify`` checks every value this way, in
    one process that may not have the devices the item was saved from)."""

    def strip(entry: Any) -> Any:
        if type(entry) is dict:
            return {k: strip(v) for k, v in entry.items() if k != "sharding"}
        return entry

    nodes = [{**node, "fields": strip(node["fields"])} for node in doc["nodes"]]
    return {**doc, "nodes": nodes}


FILL_BLOCKS_FROM = 1 << 16
"""Fills of at least this many elements are made device by device (:class:`FillBlocks`);
smaller ones whole, then split (fewer calls)."""


class FillBlocks:
    """The array of a ``fill`` entry, computed a block at a time: ``blocks[index]`` is the
    part a device holds (what ``jax.make_array_from_callback`` asks for), with no array of
    the whole on the host; ``np.asarray(blocks)`` is the whole.

    Element ``i`` (in C order) is ``start + step * (i // repeat)`` wrapped into the dtype,
    as :func:`~datarax.checkpoint.arrays.progression` computes it.

    Raises:
        MetadataCheckpointError: ``start`` or ``step`` does not fit the dtype.
    """

    def __init__(self, entry: dict[str, Any], where: str) -> None:
        self.dtype, self.shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        self.start, self.step, *repeat = entry["fill"]
        self.repeat = repeat[0] if repeat else 1
        try:
            progression(self.start, self.step, (2,), self.dtype)
        except OverflowError as e:
            raise MetadataCheckpointError(
                f"{where}: fill {entry['fill']} does not fit {self.dtype}; the item is damaged "
                "or was written by another program."
            ) from e

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return progression(self.start, self.step, self.shape, self.dtype, self.repeat)

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        rows, rest = index[0].indices(self.shape[0]), index[1:]
        whole = zip(rest, self.shape[1:], strict=True)
        if rows[2] == 1 and all(p.indices(n) == (0, n, 1) for p, n in whole):
            inner = math.prod(self.shape[1:])  # whole rows: one flat range
            return self._range(rows[0] * inner, rows[1] * inner).reshape(
                (rows[1] - rows[0], *self.shape[1:])
            )
        flat: Any = np.int64(0)
        stride = 1
        for dim, part in reversed(list(zip(self.shape, index, strict=True))):
            flat = (
                flat
                + np.arange(*part.indices(dim), dtype=np.int64).reshape(
                    (-1,) + (1,) * np.ndim(flat)
                )
                * stride
            )
            stride *= dim
        if self.step == 0:
            return np.full(np.shape(flat), self.dtype.type(self.start), self.dtype)
        out: np.ndarray = (flat // self.repeat if self.repeat > 1 else flat).astype(self.dtype)
        out *= self.dtype.type(self.step)
        out += self.dtype.type(self.start)
        return out

    def _range(self, lo: int, hi: int) -> np.ndarray:
        """Elements ``lo`` to ``hi`` (flat, C order): the values of runs ``lo // repeat``
        on, from :func:`progression` (the value of run ``k`` wrapped into the dtype first)."""
        first, last = lo // self.repeat, -(-hi // self.repeat)
        start = wrapped(self.start + self.step * first, self.dtype)
        values = progression(start, self.step, (last - first,), self.dtype)
        if self.repeat == 1:
            return values
        skip = lo - first * self.repeat
        return np.repeat(values, self.repeat)[skip : skip + hi - lo]


def missing_devices_note(
    handler: ocp.PyTreeCheckpointHandler, directory: epath.Path, names: list[str]
) -> str:
    """Why Orbax could not restore the global arrays ``names`` without a target sharding,
    where that is the reason: the devices their saved shardings name that this job lacks
    (read from Orbax's metadata of the arrays). ``""`` where none is missing or the
    metadata says nothing of devices.

    Orbax then fails with "sharding passed to deserialization should be specified", which
    does not say which devices or what to do.
    """
    try:
        tree = handler.metadata(directory).tree
        saved = {
            device.id
            for name in names
            if isinstance(sharding := tree[name].sharding, ocp.metadata.NamedShardingMetadata)
            and sharding.device_mesh is not None
            for device in jax.tree.leaves(sharding.device_mesh.mesh)
        }
    except Exception:  # no metadata to read: Orbax's own error is all there is to say
        return ""
    missing = sorted(saved - {d.id for d in jax.devices()})
    if not missing:
        return ""
    return (
        f" The arrays were saved sharded over devices {sorted(saved)[:16]}, but this job has "
        f"no device {missing[:8]} (it has {jax.device_count()} devices). Restore with a target "
        "whose leaves carry the sharding to restore onto: MetadataRestore(target), a "
        "jax.ShapeDtypeStruct with a sharding will do."
    )

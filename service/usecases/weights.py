"""A spec's arrays by name, and reading them from ``.npz`` bytes a caller sent (ImportModel).

The names are the engine's (``"0.W"``, ``"2.1.gamma"``, ``"1.running_mean"``: layer path, then
array), as ExportModel sends them and ``gradwire export`` writes them. The bytes are untrusted:
they are read with ``np.load(..., allow_pickle=False)``, each array's header is checked against
the spec before its data is read (so a header that claims a huge array reads nothing), and the
archive may not be larger than an ``.npz`` of the spec's arrays can be (so a zip of a million
entries is refused before it is opened). Every problem is reported at once, one field per array.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

from gradwire.engine import InvalidArgument, NetworkSpec
from gradwire.engine.errors import cut
from gradwire.engine.spec import BatchNorm, Dense, LayerSpec, Residual

FIELD = "weights"
NPY = ".npy"
ENTRY_OVERHEAD = 1024
"""Bytes an ``.npz`` spends on one array besides its data and its name (written twice): the
``.npy`` header (128 bytes as NumPy writes it, up to 64 KiB allowed but never needed for a
float array), the zip's local header and central directory entry, with ZIP64 extras."""
ARCHIVE_OVERHEAD = 4096
"""The zip's end records, and slack."""
MAX_HEADER = 10_000
"""The longest ``.npy`` header read (NumPy's own default bound)."""
BAD_ARCHIVE = (
    ValueError,  # numpy's header and data checks, UnicodeDecodeError of a name
    OSError,
    EOFError,
    zipfile.BadZipFile,  # a CRC or a size that does not match
    zipfile.LargeZipFile,
    zlib.error,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
    KeyError,
    OverflowError,
    SyntaxError,  # a header dict numpy's literal_eval refuses
)
"""What reading a malformed archive raises, from zipfile, zlib and NumPy's format reader."""


@dataclass(frozen=True)
class Expected:
    """One array a spec has: its shape and whether it is a batch-norm running variance."""

    shape: tuple[int, ...]
    variance: bool = False


def spec_arrays(spec: NetworkSpec) -> dict[str, Expected]:
    """Every array a network of ``spec`` holds, by name: parameters in order, then buffers
    (the order of :meth:`Network.state_arrays`)."""
    parameters: dict[str, Expected] = {}
    buffers: dict[str, Expected] = {}
    for path, layer, width in _layers(spec.layers, "", spec.input_dim):
        if isinstance(layer, Dense):
            parameters[f"{path}W"] = Expected((width, layer.units))
            parameters[f"{path}b"] = Expected((layer.units,))
        elif isinstance(layer, BatchNorm):
            parameters[f"{path}gamma"] = Expected((width,))
            parameters[f"{path}beta"] = Expected((width,))
            buffers[f"{path}running_mean"] = Expected((width,))
            buffers[f"{path}running_var"] = Expected((width,), variance=True)
    return parameters | buffers


def _layers(layers: Sequence[LayerSpec], prefix: str, width: int) -> Iterator[tuple[str, LayerSpec, int]]:
    """``(path prefix, layer, width in)`` of every layer, a block's inner layers after it."""
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}."
        yield path, layer, width
        if isinstance(layer, Residual):
            yield from _layers(layer.layers, path, width)
        if isinstance(layer, Dense):
            width = layer.units


def largest_npz(spec: NetworkSpec) -> int:
    """The most bytes an ``.npz`` of ``spec``'s arrays takes (uncompressed, as ``np.savez``
    writes it): what ImportModel accepts at most."""
    itemsize = np.dtype(spec.dtype).itemsize
    return ARCHIVE_OVERHEAD + sum(
        int(np.prod(e.shape)) * itemsize + ENTRY_OVERHEAD + 2 * len(name + NPY)
        for name, e in spec_arrays(spec).items()
    )


def read_npz(spec: NetworkSpec, data: bytes) -> dict[str, np.ndarray]:
    """The spec's arrays from ``.npz`` bytes, native byte order and C order, each checked: no
    array missing or extra, each of the spec's shape and dtype (either byte order), finite, a
    running variance ≥ 0. Raises :class:`InvalidArgument` naming every problem (``weights.0.W``)."""
    limit = largest_npz(spec)
    if len(data) > limit:
        raise InvalidArgument(
            FIELD, f"{len(data)} bytes, more than an .npz of this spec's arrays takes ({limit} at most)"
        )
    if not data.startswith(b"PK"):
        raise InvalidArgument(FIELD, "not an .npz archive (numpy.savez writes one)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise InvalidArgument(FIELD, "not an .npz archive (numpy.savez writes one)")
            return _read_archive(spec, archive)
    except BAD_ARCHIVE as exc:
        if isinstance(exc, InvalidArgument):
            raise
        reason = cut(" ".join(str(exc).split()) or type(exc).__name__, 200)
        raise InvalidArgument(FIELD, f"not a readable .npz archive: {reason}") from None


def _read_archive(spec: NetworkSpec, archive: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    expected = spec_arrays(spec)
    dtype = np.dtype(spec.dtype)
    zipped = archive.zip
    assert zipped is not None  # open until the archive is closed
    members = zipped.namelist()
    problems: list[InvalidArgument] = []
    seen: set[str] = set()
    arrays: dict[str, np.ndarray] = {}
    for member in members:
        name = member.removesuffix(NPY)
        field = f"{FIELD}.{cut(name, 80)}"
        if member in seen:
            problems.append(InvalidArgument(field, "appears twice in the archive"))
            continue
        seen.add(member)
        if not member.endswith(NPY) or name not in expected:
            problems.append(InvalidArgument(field, "is no array of this spec"))
            continue
        want = expected[name]
        with zipped.open(member) as file:
            problem = _check_header(file, want.shape, dtype)
        if problem:
            problems.append(InvalidArgument(field, problem))
            continue
        with zipped.open(member) as file:  # the member itself (NpzFile[name] may pick another)
            read = np.lib.format.read_array(file, allow_pickle=False, max_header_size=MAX_HEADER)
        array = np.ascontiguousarray(read, dtype)  # native byte order, C order
        if not np.isfinite(array).all():
            problems.append(InvalidArgument(field, "holds values that are not finite"))
        elif want.variance and (array < 0).any():
            problems.append(InvalidArgument(field, "a running variance must be ≥ 0"))
        else:
            arrays[name] = array
    present = {m.removesuffix(NPY) for m in seen if m.endswith(NPY)}
    problems += [
        InvalidArgument(f"{FIELD}.{name}", f"is missing: the spec has it, shape {list(e.shape)}, {dtype}")
        for name, e in expected.items()
        if name not in present
    ]
    if problems:
        raise InvalidArgument.every(problems)
    return {name: arrays[name] for name in expected}  # the spec's order


def _check_header(file: IO[bytes], shape: tuple[int, ...], dtype: np.dtype) -> str:
    """What is wrong with an ``.npy`` member's header against the spec ('' if nothing), read
    without its data: a wrong shape or dtype is refused before a byte of the array is read."""
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(file, max_header_size=MAX_HEADER)
    elif version == (2, 0):
        header = np.lib.format.read_array_header_2_0(file, max_header_size=MAX_HEADER)
    else:
        return f".npy format {version[0]}.{version[1]}: only 1.0 and 2.0 hold plain arrays"
    given_shape, _, given = header
    wrong = []
    if tuple(given_shape) != shape:
        wrong.append(f"shape {list(given_shape)}, the spec's is {list(shape)}")
    if given.newbyteorder("=") != dtype:
        wrong.append(f"dtype {given}, the spec's is {dtype}")
    return "; ".join(wrong)

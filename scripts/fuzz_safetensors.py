"""Fuzz the safetensors reader against the safetensors library's own ``safe_open``.

Each case mutates a small real safetensors file (header length, JSON text,
dtypes, shapes, offsets, data) and compares two decisions. Every file that
``safe_open`` rejects, pytest-setol must reject with a ``CheckpointError``
naming the file; every file it accepts, pytest-setol must read to the same
names, shapes, dtypes and bytes. Any other exception is a crash, and a case
that runs past ``--timeout`` seconds is a hang.

    python scripts/fuzz_safetensors.py --cases 5000 --seed 0

Exits 1 when there is any disagreement, crash or hang. Tensors of the packed
4- and 6-bit float dtypes are compared by name, shape and dtype only, since
numpy has no type for them and pytest-setol never analyses them.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import struct
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pytest_setol.errors import CheckpointError
from pytest_setol.reader import open_checkpoint
from pytest_setol.reader_safetensors import DTYPE_BITS

#: Dtype codes that pytest-setol reads into numpy arrays.
READABLE = set(DTYPE_BITS) - {"F4", "F6_E2M3", "F6_E3M2"}
#: Content of an empty tensor with a dimension of 2**63 or more, which neither
#: torch nor numpy can create: both readers must decline it.
UNREADABLE = "unreadable"
_JSON_CHARACTERS = '{}[]",:0123456789-+.eEtrufalsn \\u\n'
_ODD_VALUES: list[Any] = [
    -1, -0.0, 0, 1, 2, 3, 4, 7, 2**31, 2**32, 2**63, 2**64, 2**64 + 1, 10**30,
    1.5, "3", None, True, [], {},
]  # fmt: skip
_ODD_TEXT = [
    "NaN", "Infinity", "-0", "1e999", "18446744073709551616", '"\\ud800"',
    '"\\ud83d\\ude00"', "null", "[]", "{}", "true", "[" * 124 + "]" * 124,
    "[" * 126 + "]" * 126,
]  # fmt: skip


def base_file(path: Path) -> bytes:
    """Write the seed file: every readable dtype, a scalar, an empty tensor."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "linear.weight": torch.randn(4, 3, generator=generator),
        "linear.bias": torch.randn(3, generator=generator).double(),
        "half": torch.randn(2, 5, generator=generator).half(),
        "brain": torch.randn(3, 2, generator=generator).bfloat16(),
        "fp8": torch.randn(2, 2, generator=generator).to(torch.float8_e4m3fn),
        "ids": torch.arange(3),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(4, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def assemble(header: dict[str, Any] | str | bytes, data: bytes) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header)
    text = (
        header.encode("utf-8", errors="surrogatepass")
        if isinstance(header, str)
        else header
    )
    return struct.pack("<Q", len(text)) + text + data


def tensor_names(header: dict[str, Any]) -> list[str]:
    return [name for name in header if name != "__metadata__"]


# Mutations: each takes (rng, header, data) and returns the new file bytes. ---


def mutate_length(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    raw = assemble(header, data)
    (length,) = struct.unpack("<Q", raw[:8])
    choice = rng.choice(
        [0, 1, 7, length - 1, length + 1, length + rng.randint(2, 64), len(raw),
         len(raw) - 8, 100_000_000, 100_000_001, 2**63, 2**64 - 1,
         rng.randint(0, 2**20)]
    )  # fmt: skip
    return struct.pack("<Q", max(0, min(choice, 2**64 - 1))) + raw[8:]


def mutate_text(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    text = bytearray(json.dumps(header).encode())
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(text))
        action = rng.randrange(5)
        if action == 0:
            text[position] = rng.randrange(256)
        elif action == 1:
            text.insert(position, ord(rng.choice(_JSON_CHARACTERS)))
        elif action == 2:
            del text[position]
        elif action == 3:
            del text[position:]
            break
        else:
            text[position:position] = rng.choice(_ODD_TEXT).encode()
    return assemble(bytes(text), data)


def mutate_dtype(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    name = rng.choice(tensor_names(header))
    codes = sorted(DTYPE_BITS) + ["F128", "f32", "", "float32", "Q4_K"]
    header[name]["dtype"] = rng.choice(codes + [None, 4, ["F32"]])
    return assemble(header, data)


def mutate_shape(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    name = rng.choice(tensor_names(header))
    shape = list(header[name]["shape"])
    count = 1
    for dim in shape:
        count *= dim if isinstance(dim, int) else 0
    action = rng.randrange(4)
    if action == 0 and 0 < count <= 4096:
        # Same element count in another arrangement: a valid file.
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        first = rng.choice(divisors)
        shape = rng.choice(
            [[count], [first, count // first], [1, first, count // first]]
        )
    elif action == 1 and shape:
        shape[rng.randrange(len(shape))] = rng.choice(_ODD_VALUES)
    elif action == 2:
        shape.insert(rng.randrange(len(shape) + 1), rng.choice([0, 1, 2]))
    elif shape:
        shape.pop(rng.randrange(len(shape)))
    header[name]["shape"] = shape if rng.random() < 0.9 else rng.choice(_ODD_VALUES)
    return assemble(header, data)


def mutate_offsets(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    names = tensor_names(header)
    name = rng.choice(names)
    begin, end = header[name]["data_offsets"]
    action = rng.randrange(5)
    if action == 0:
        delta = rng.choice([-8, -4, -2, -1, 1, 2, 4, 8])
        header[name]["data_offsets"] = [max(0, begin + delta), max(0, end + delta)]
    elif action == 1:
        header[name]["data_offsets"] = [begin, max(0, end + rng.choice([-1, 1, 3]))]
    elif action == 2:
        other = rng.choice(names)
        header[name]["data_offsets"], header[other]["data_offsets"] = (
            header[other]["data_offsets"],
            header[name]["data_offsets"],
        )
    elif action == 3:
        header[name]["data_offsets"] = [end, begin]
    else:
        header[name]["data_offsets"] = rng.choice(
            [[begin], [begin, end, end], [rng.choice(_ODD_VALUES), end], "0,4", None]
        )
    return assemble(header, data)


def mutate_layout(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    """Reorder the tensors' bytes with matching offsets: a different valid file."""
    names = tensor_names(header)
    rng.shuffle(names)
    chunks = []
    position = 0
    for name in names:
        begin, end = header[name]["data_offsets"]
        chunks.append(data[begin:end])
        header[name]["data_offsets"] = [position, position + end - begin]
        position += end - begin
    return assemble(header, b"".join(chunks))


def mutate_data(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    action = rng.randrange(3)
    if action == 0:
        return assemble(header, data + bytes(rng.randint(1, 9)))
    if action == 1:
        return assemble(header, data[: rng.randrange(len(data))])
    values = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        values[rng.randrange(len(values))] = rng.randrange(256)
    return assemble(header, bytes(values))  # same layout, new values: valid


def mutate_fields(rng: random.Random, header: dict[str, Any], data: bytes) -> bytes:
    name = rng.choice(tensor_names(header))
    action = rng.randrange(6)
    if action == 0:
        header[name]["extra"] = rng.choice(_ODD_VALUES)
    elif action == 1:
        del header[name][rng.choice(["dtype", "shape", "data_offsets"])]
    elif action == 2:
        del header[name]
    elif action == 3:
        header["__metadata__"] = rng.choice(
            [{"format": "pt"}, {"step": 1}, None, [], {"a": {"b": "c"}}, "pt"]
        )
    elif action == 4:
        text = json.dumps(header)
        field = rng.choice(['"dtype": "F32", ', '"shape": [1], ', '"extra": NaN, '])
        return assemble(text.replace("{", "{" + field, 2).replace(field, "", 1), data)
    else:
        # A literal Python's json reads but a strict parser may not, as the value
        # of an ignored field of a valid entry, of a dimension, or of metadata.
        text = json.dumps(header)
        odd = rng.choice(_ODD_TEXT)
        entry = json.dumps({name: header[name]})[1:-1]
        target = rng.choice(
            [
                entry[:-1] + f', "extra": {odd}}}',
                entry.replace('"shape": [', f'"shape": [{odd}, ', 1),
            ]
        )
        if rng.random() < 0.2:
            return assemble(text.replace('"pt"', odd, 1), data)
        return assemble(text.replace(entry, target, 1), data)
    return assemble(header, data)


MUTATIONS: list[Callable[[random.Random, dict[str, Any], bytes], bytes]] = [
    mutate_length, mutate_text, mutate_dtype, mutate_shape, mutate_offsets,
    mutate_layout, mutate_data, mutate_fields,
]  # fmt: skip


# Decisions -------------------------------------------------------------------


Decoded = dict[str, tuple[str, list[int], bytes | str | None]]


def reference(path: Path) -> Decoded | None:
    """Return what safe_open reads (name: dtype, shape, bytes), or None on rejection."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception:  # noqa: BLE001  (the library raises several types)
        return None
    result = {}
    with handle:
        for name in handle.keys():
            view = handle.get_slice(name)
            dtype, shape = view.get_dtype(), list(view.get_shape())
            content: bytes | str | None = None
            if dtype in READABLE:
                try:
                    tensor = handle.get_tensor(name)
                except (TypeError, ValueError, RuntimeError):
                    content = UNREADABLE  # a dimension torch cannot hold
                else:
                    content = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
            result[name] = (dtype, shape, content)
    return result


def ours(path: Path) -> Decoded | None:
    try:
        checkpoint = open_checkpoint(path)
    except CheckpointError as error:
        if str(path) not in str(error):
            raise AssertionError(f"error does not name the file: {error}") from None
        return None
    result = {}
    for tensor in checkpoint.tensors:
        content: bytes | str | None = None
        if tensor.dtype in READABLE:
            try:
                content = tensor.read().tobytes()
            except CheckpointError:
                content = UNREADABLE
        result[tensor.name] = (tensor.dtype, list(tensor.shape), content)
    return result


class Hang(Exception):
    """A case ran past the time limit."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


def run(cases: int, seed: int, timeout: int, folder: Path) -> Counter[str]:
    seed_bytes = base_file(folder / "seed.safetensors")
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    signal.signal(signal.SIGALRM, _alarm)
    path = folder / "case.safetensors"
    for case in range(cases):
        header, data = split(seed_bytes)
        raw = seed_bytes
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            mutation = rng.choice(MUTATIONS)
            try:
                header, data = split(raw)
                raw = mutation(rng, header, data)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                break  # an earlier mutation left nothing this one can change
        path.write_bytes(raw)
        signal.alarm(timeout)
        try:
            expected = reference(path)
            found = ours(path)
        except Hang:
            counts["hangs"] += 1
            print(f"case {case}: hang", file=sys.stderr)
            continue
        except Exception:  # noqa: BLE001  (any other exception is a crash)
            counts["crashes"] += 1
            print(f"case {case}: crash\n{traceback.format_exc()}", file=sys.stderr)
            continue
        finally:
            signal.alarm(0)
        counts["accepted" if expected is not None else "rejected"] += 1
        if expected != found:
            counts["disagreements"] += 1
            (folder / f"disagreement-{case}.safetensors").write_bytes(raw)
            print(
                f"case {case}: safe_open {'accepts' if expected else 'rejects'}, "
                f"pytest-setol {'accepts' if found else 'rejects'} "
                f"(header {raw[8:200]!r})",
                file=sys.stderr,
            )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", type=int, default=5000, help="cases to run (default: 5000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--timeout",
        type=int,
        default=10,
        help="seconds before a case is a hang (default: 10)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="write disagreeing files to DIR (default: a temp dir)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.keep or temporary)
        folder.mkdir(parents=True, exist_ok=True)
        counts = run(args.cases, args.seed, args.timeout, folder)
    print(
        f"{args.cases} cases, seed {args.seed}: {counts['accepted']} accepted and "
        f"{counts['rejected']} rejected by safe_open; {counts['disagreements']} "
        f"disagreements, {counts['crashes']} crashes, {counts['hangs']} hangs"
    )
    return 1 if counts["disagreements"] or counts["crashes"] or counts["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())

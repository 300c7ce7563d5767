"""``GGUFFileReader``: ``gguf.GGUFReader`` with metadata arrays read in bulk.

gguf-py's reader builds one numpy view (and, for strings, two) per array element: a 262,144-token
vocabulary (Gemma 3) becomes ~800,000 small objects and takes ~30 s to open, the default model's
49,152 tokens + 48,900 merges ~8 s. Here a numeric array is one numpy view of the file and a string
array is decoded in one pass over the memory-mapped bytes (GGUF spec: every string is a little- or
big-endian uint64 length followed by UTF-8 bytes, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
Everything else (header checks, tensor infos, tensor data as memory-mapped views) is gguf-py's,
and ``field.contents()`` returns the same values as gguf-py's.

Kept at the top of the package (no torch import) so that both the tokenizer and the model
loader use it.
"""

from __future__ import annotations

import codecs
import struct
import sys
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, ReaderField


class _StringArrayField(ReaderField):
    """A ``ReaderField`` holding an array of strings already decoded (``contents`` returns them;
    ``parts`` keeps only the key, type, item type and length, not one view per string)."""

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        return self.strings[index_or_slice]  # type: ignore[attr-defined]


class _NumericArrayField(ReaderField):
    """A ``ReaderField`` whose last part is the whole numeric array (one numpy view)."""

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        return self.parts[-1][index_or_slice].tolist()


class GGUFFileReader(GGUFReader):
    """A ``gguf.GGUFReader`` (same ``fields``, ``tensors``, ``data``) that opens files with large
    tokenizer arrays in a fraction of a second. Fields of type array are not editable through
    ``parts`` in ``'r+'`` mode (kaon only reads).

    Raises:
        ValueError, struct.error, IndexError, UnicodeDecodeError: as gguf-py's reader does on a
            corrupt or truncated file (``kaon.models.loader.gguf.open_gguf`` names the file).
    """

    def _build_fields(self, offs: int, count: int) -> int:
        for _ in range(count):
            orig_offs = offs
            key_length, key_data = self._get_str(offs)
            offs += int(key_length.nbytes + key_data.nbytes)
            raw_type = self._get(offs, np.uint32)
            offs += int(raw_type.nbytes)
            parts: list[Any] = [key_length, key_data, raw_type]
            name = str(bytes(key_data), encoding="utf-8")
            if int(raw_type[0]) == GGUFValueType.ARRAY:
                field, size = self._array_field(orig_offs, name, parts, offs)
            else:
                size, value_parts, indices, types = self._get_field_parts(offs, raw_type[0])
                field = ReaderField(
                    orig_offs, name, parts + value_parts, [i + len(parts) for i in indices], types
                )
            self._push_field(field, skip_sum=True)
            offs += size
        return offs

    def _array_field(
        self, orig_offs: int, name: str, parts: list[Any], offs: int
    ) -> tuple[ReaderField, int]:
        """The field of the array whose item type starts at ``offs``, and the bytes it takes
        from there (item type, length, items)."""
        item_type = self._get(offs, np.uint32)
        length = self._get(offs + 4, np.uint64)
        parts = [*parts, item_type, length]
        start = offs + 12
        gtype = GGUFValueType(int(item_type[0]))
        count = int(length[0])
        types = [GGUFValueType.ARRAY, gtype]
        if gtype == GGUFValueType.STRING:
            strings, end = self._read_strings(start, count)
            field = _StringArrayField(orig_offs, name, parts, [], types)
            field.strings = strings  # type: ignore[attr-defined]
            return field, end - offs
        numpy_type = self.gguf_scalar_to_np.get(gtype)
        if numpy_type is None:  # arrays of arrays: gguf-py's element-wise parse
            key_parts = parts[:3]  # _get_field_parts reads the item type and length again
            size, value_parts, indices, types = self._get_field_parts(offs, GGUFValueType.ARRAY)
            indices = [i + len(key_parts) for i in indices]
            return ReaderField(orig_offs, name, key_parts + value_parts, indices, types), size
        values = self._get(start, numpy_type, count)
        if len(values) != count:
            raise ValueError(f"GGUF field {name}: array cut short ({len(values)} of {count} items)")
        field = _NumericArrayField(orig_offs, name, [*parts, values], [len(parts)], types)
        return field, start + int(values.nbytes) - offs

    def _read_strings(self, offs: int, count: int) -> tuple[list[str], int]:
        """``count`` GGUF strings from ``offs``; returns them and the offset after the last."""
        order = "<" if (self.byte_order == "I") == (sys.byteorder == "little") else ">"
        read_length = struct.Struct(order + "Q").unpack_from
        buffer = memoryview(self.data)
        decode = codecs.utf_8_decode
        strings = []
        append = strings.append
        for _ in range(count):
            (size,) = read_length(buffer, offs)
            offs += 8
            end = offs + size
            if end > len(buffer):
                raise ValueError(f"GGUF string at offset {offs} runs past the end of the file")
            append(decode(buffer[offs:end], "strict", True)[0])
            offs = end
        return strings, offs

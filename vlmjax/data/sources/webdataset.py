"""WebDataset tar shards (img2dataset layout) as a random-access source: `webdataset:<shards>`.

`<shards>` is a glob (`/data/cc3m/*.tar`), a brace range (`/data/cc3m/{00000..00331}.tar`) or a comma list of
either. Each sample is a group of tar members sharing a key (`00000123.jpg`, `00000123.txt`, optional
`00000123.json`); examples are `{'image': encoded bytes, 'caption': str, 'key': str, 'width': int, 'height': int,
'caption_count': int, 'json': str ('' if absent)}`. Width/height come from the image header (PIL reads it
without decoding the pixels), so the size filters cost no decode. `caption_count` is how many images of the whole
source share the (normalised) caption: the table the ALIGN `filter_frequent_caption` op needs, built once while
indexing (keyed by a 63-bit caption hash, so CC12M-sized tables fit in memory).

Random access: one sequential pass over each shard's tar headers records (offset, size) of every member; reads
are then one `pread` (thread-safe: grain reads from several threads). The index is kept in memory per process,
and on disk under `<data_dir>/webdataset_index/` when `config.data.data_dir` is set, so restarts and other hosts
skip the scan.
Splits: `train` (or any name) is every sample; `train[a:b]` a slice of the sample order (e.g. a held-out tail).
"""
import collections
import glob
import hashlib
import io
import json
import os
import re
import tarfile
from typing import Dict, List, Sequence, Tuple

from PIL import Image

from vlmjax.data.filters import caption_hash

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_VERSION = 1


# ---- shard lists ----------------------------------------------------------------------------------------------
def _expand_braces(pattern: str) -> List[str]:
    """'a{00..02}.tar' -> ['a00.tar', 'a01.tar', 'a02.tar'] (zero padding kept); several ranges multiply."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
        out += _expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


def expand_shards(spec: str) -> List[str]:
    """Comma list of globs / brace ranges / paths -> shard paths, in the order given (globs sorted)."""
    paths = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        for pattern in _expand_braces(part):
            if glob.has_magic(pattern):
                found = sorted(glob.glob(pattern))
                if not found:
                    raise FileNotFoundError(f"webdataset: no shard matches {pattern!r}")
                paths += found
            elif not os.path.isfile(pattern):
                raise FileNotFoundError(f"webdataset: shard {pattern!r} does not exist")
            else:
                paths.append(pattern)
    if not paths:
        raise ValueError(f"webdataset: no shards in {spec!r}; expected 'webdataset:<glob or comma list of .tar>'")
    return paths


# ---- indexing -------------------------------------------------------------------------------------------------
def _split_name(member: str) -> Tuple[str, str]:
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'): key up to the first dot of the basename (webdataset rule)."""
    d, base = os.path.split(member)
    stem, _, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), ext.lower()


def index_shard(path: str) -> Dict:
    """One pass over the tar headers: {'samples': [[key, image_ext, [off, size], txt [off, size] | None,
    json [off, size] | None, caption_hash]], 'skipped_no_image': n}. Unreadable tar -> ValueError naming the shard."""
    members = collections.OrderedDict()
    size = os.path.getsize(path)
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"member {info.name!r} runs past the end of the file (truncated)")
                key, ext = _split_name(info.name)
                entry = members.setdefault(key, {})
                entry[ext] = [info.offset_data, info.size]
                if ext == "txt":  # captions are a few bytes: read now, the frequency table needs all of them
                    entry["hash"] = caption_hash(tar.extractfile(info).read().decode("utf-8", errors="replace"))
            # tarfile stops quietly at a header cut short; a complete archive ends with a zero block there.
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(512) != bytes(512):
                raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset} (truncated)")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"webdataset: cannot read shard {path!r} ({type(e).__name__}: {e}); the file is not a "
                         f"valid tar archive or is truncated; re-download it or drop it from config.data.name"
                         ) from None
    samples, skipped = [], 0
    for key, entry in members.items():
        ext = next((e for e in IMAGE_EXTS if e in entry), None)
        if ext is None:
            skipped += 1
            continue
        samples.append([key, ext, entry[ext], entry.get("txt"), entry.get("json"), entry.get("hash", caption_hash(""))])
    return {"samples": samples, "skipped_no_image": skipped}


_MEMORY_INDEX: Dict[Tuple, Dict] = {}


def _shard_id(path: str) -> Tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def cached_index(path: str, cache_dir: str = "") -> Dict:
    """`index_shard(path)`, memoised in memory and (if cache_dir) on disk; a changed shard is re-indexed."""
    sid = _shard_id(path)
    if sid in _MEMORY_INDEX:
        return _MEMORY_INDEX[sid]
    file = None
    if cache_dir:
        file = os.path.join(cache_dir, hashlib.sha1(repr(sid).encode()).hexdigest() + ".json")
        try:
            with open(file) as f:
                idx = json.load(f)
            if idx.get("version") == INDEX_VERSION:
                _MEMORY_INDEX[sid] = idx
                return idx
        except (OSError, ValueError):
            pass
    idx = {"version": INDEX_VERSION, **index_shard(path)}
    if file:
        try:  # write-then-rename: hosts indexing the same shard never see a half-written file
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{file}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(idx, f)
            os.replace(tmp, file)
        except OSError:
            pass  # a read-only data_dir only costs a rescan next time
    _MEMORY_INDEX[sid] = idx
    return idx


# ---- the source -----------------------------------------------------------------------------------------------
def _image_size(data: bytes) -> Tuple[int, int]:
    """(width, height) from the header only; (0, 0) when unreadable (the decode op then drops it as corrupt)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # PIL raises several types for bad bytes
        return 0, 0


def _parse_split(split: str, n: int) -> range:
    m = re.fullmatch(r"\s*\w*\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*", split or "")
    if not m:
        raise ValueError(f"webdataset: split {split!r}: expected a name or name[start:stop], e.g. 'train[:-1000]'")
    lo, hi = (int(v) if v else None for v in m.groups())
    return range(n)[slice(lo, hi)]


class WebDatasetSource:
    """Random-access view (`len`, `[i]`) over the samples of a list of tar shards; picklable for grain workers."""

    def __init__(self, shards: Sequence[str], split: str = "train", cache_dir: str = ""):
        self.shards = list(shards)
        self._rows = []  # (shard number, sample)
        counts = collections.Counter()
        for s, path in enumerate(self.shards):
            for sample in cached_index(path, cache_dir)["samples"]:
                self._rows.append((s, tuple(sample)))
                counts[sample[5]] += 1
        # Frequency over the whole source, not the slice: "shared by > 10 images" is a property of the data set.
        self._counts = {k: v for k, v in counts.items() if v > 1}
        self._order = _parse_split(split, len(self._rows))
        self._files = {}

    def __len__(self) -> int:
        return len(self._order)

    def _read(self, shard: int, where) -> bytes:
        # pread, not seek + read: grain reads from several threads, and they share the descriptor.
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.shards[shard], os.O_RDONLY)
        data = os.pread(fd, where[1], where[0])
        if len(data) != where[1]:
            raise ValueError(f"webdataset: shard {self.shards[shard]!r} is shorter than its index says "
                             f"(changed since indexing?)")
        return data

    def __getitem__(self, i: int) -> dict:
        shard, (key, ext, img_at, txt_at, json_at, chash) = self._rows[self._order[i]]
        image = self._read(shard, img_at)
        width, height = _image_size(image)
        text = lambda at: "" if at is None else self._read(shard, at).decode("utf-8", errors="replace")  # noqa
        # Every example has every key (an absent .json is ""): batches stack the keys of their first example.
        return {"image": image, "caption": text(txt_at).strip(), "key": key, "width": width, "height": height,
                "caption_count": self._counts.get(chash, 1), "json": text(json_at)}

    def caption_count(self, caption: str) -> int:
        """How many images of the whole source carry `caption` (after `normalize_caption`)."""
        return self._counts.get(caption_hash(caption), 1)

    def __getstate__(self):  # open file handles do not pickle; each worker reopens its own
        return {**self.__dict__, "_files": {}}

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)


def source(cfg, split: str) -> WebDatasetSource:
    """The source of `config.data.name='webdataset:<shards>'`; the shards' index is kept under
    `<cfg.data_dir>/webdataset_index/` when `cfg.data_dir` is set."""
    spec = cfg.name.split(":", 1)[1]
    cache_dir = os.path.join(cfg.data_dir, "webdataset_index") if cfg.get("data_dir") else ""
    return WebDatasetSource(expand_shards(spec), split, cache_dir)

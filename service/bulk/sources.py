"""Where a bulk build's images come from: listed in a fixed order, read through fsspec.

A source is a folder, an image file, a .tar/.tar.gz archive, a Parquet or CSV list of image paths or
URLs (a column named `path` or `url`; its other columns become metadata), or a glob of any of these
(`s3://bucket/shards-*.tar`). Local paths work as they are; `s3://`, `gs://`, … work once their fsspec
extra (s3fs, gcsfs) is installed. A folder or archive is listed in the order, and with the names and
collection metadata, of the local build (`model.data.iter_records`), so both builds give each image the
same record and the same id. The listing streams (`iter_source`): one folder, one archive or one batch of
a list's rows is held at a time, so a glob of many tar shards or a long Parquet list costs the driver
no more memory than its largest part. fsspec is imported on first use: the local build needs none of this.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from index.store import StoreError, validate_metadata
from model.data import is_image_name, member_name  # the local build's rules, so both list alike

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_COLUMNS = ("path", "url")
GLOB_CHARS = "*?["
LIST_BATCH = 8_192  # rows of a Parquet list read at a time
CSV_BLOCK = 16 << 20  # bytes of a CSV list read at a time (column types are inferred from the first)


@dataclass(frozen=True)
class Entry:
    """One image of a source: the file holding it, its record name and metadata, and which bytes are it."""

    url: str  # the image file, or the archive holding it (a local path or a URL)
    name: str
    metadata: dict = field(default_factory=dict)
    member: str | None = None  # the member of the archive `url`
    start: int = 0  # its bytes: url[start:end] (end None: to the end of the file)
    end: int | None = None
    sequential: bool = False  # a member of a compressed archive: found by reading the archive in order

    @property
    def source(self) -> str:
        """Where it was read from, for messages (never stored)."""
        return f"{self.url}::{self.member}" if self.member else self.url

    def to_dict(self) -> dict:
        """Its fields as JSON-ready values (`dataclasses.asdict`, without its deep copies: 10x slower)."""
        return {f: getattr(self, f) for f in ENTRY_FIELDS} | {"metadata": dict(self.metadata)}


ENTRY_FIELDS = tuple(f.name for f in fields(Entry))


def collection_metadata(root: str | Path, name: str, is_dir: bool) -> dict[str, str]:
    """An image's place relative to its collection: {path: inside the folder/archive/list, collection: its name}.

    A local root is resolved (`.` is named after the folder it is); absolute paths of the machine that
    built the index are not stored: the service returns metadata to its readers."""
    place = Path(root).resolve() if isinstance(root, Path) else PurePosixPath(root)
    return _metadata(place, name, is_dir or PurePosixPath(root).name != name)


def _metadata(place: PurePath, name: str, inside: bool) -> dict[str, str]:
    """`place`: the resolved root; `inside`: the image is in it (not the root itself)."""
    if inside:
        return {"path": name, "collection": place.name}
    return {"path": place.name, "collection": place.parent.name}


def iter_source(source: str) -> Iterator[Entry]:
    """Every image of `source` (a folder, file, archive, path list or glob of these), in build order,
    streamed: one folder, one archive or one batch of a list's rows is held at a time. A source that
    is not there is refused at once (FileNotFoundError), before anything is read."""
    fs, path = _filesystem(source)
    if any(c in path for c in GLOB_CHARS):
        matches = sorted(fs.glob(path))
        if not matches:
            raise FileNotFoundError(f"nothing matches {source}")
    elif fs.exists(path):
        matches = [path]
    else:
        raise FileNotFoundError(f"no such file or folder: {source}")
    return (e for match in matches for e in _list_one(fs, match))


def list_source(source: str) -> list[Entry]:
    """`iter_source` held in memory whole (small sources, tests and benchmarks)."""
    return list(iter_source(source))


def _list_one(fs, path: str) -> Iterable[Entry]:
    url, root = _url(fs, path), _root(fs, path)
    if fs.isdir(path):
        return _list_folder(fs, path, root)
    if path.endswith(TAR_SUFFIXES):
        return _list_tar(fs, path, url, root)
    if path.endswith((".parquet", ".csv")):
        return _list_paths(fs, path, root)
    return [Entry(url, PurePosixPath(path).name, _metadata(root, PurePosixPath(path).name, False))]


def _list_folder(fs, path: str, root: PurePath) -> Iterator[Entry]:
    """The image files under a folder, sorted as `Path`s sort (part by part), as the local build does:
    walked depth first with each folder's children in name order, one folder's names held at a time."""
    base = path.rstrip("/") + "/"
    for p in _walk_sorted(fs, base):
        if p.startswith(base) and is_image_name(p):
            name = p[len(base) :]
            yield Entry(_url(fs, p), name, _metadata(root, name, True))


def _walk_sorted(fs, folder: str) -> Iterator[str]:
    """The files under `folder`, depth first, each folder's entries in name order."""
    children = [(info["name"], info["type"] == "directory") for info in fs.ls(folder, detail=True)]
    for p, is_dir in sorted(children, key=lambda c: c[0].rstrip("/").rsplit("/", 1)[-1]):
        if is_dir:
            yield from _walk_sorted(fs, p.rstrip("/") + "/")
        else:
            yield p


def _list_tar(fs, path: str, url: str, root: PurePath) -> list[Entry]:
    """An archive's images in name order (archive order sorted, as `model.data._iter_tar` reads them).

    Members of an uncompressed .tar are byte ranges of it (read directly); those of a .tar.gz are read
    by streaming through the archive, once per chunk of work."""
    compressed = not path.endswith(".tar")
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*" if compressed else "r:") as tar:
        members = [m for m in tar if m.isfile() and is_image_name(m.name)]
    entries = [
        Entry(
            url,
            member_name(m),
            _metadata(root, member_name(m), PurePosixPath(path).name != member_name(m)),
            member=m.name,
            start=0 if compressed else m.offset_data,
            end=None if compressed else m.offset_data + m.size,
            sequential=compressed,
        )
        for m in members
    ]
    return sorted(entries, key=lambda e: e.name)


def _list_paths(fs, path: str, root: PurePath) -> Iterator[Entry]:
    """The rows of a Parquet/CSV list, in its order and read in batches: its `path` (or `url`) column
    read relative to the list's folder, its other columns as metadata."""
    folder, row = PurePosixPath(path).parent, 0
    with fs.open(path, "rb") as f:
        names, batches = _open_table(f, path)
        column = next((c for c in LIST_COLUMNS if c in names), None)
        if column is None:
            raise ValueError(f"{path} needs a column named 'path' or 'url' (it has: {', '.join(names) or 'none'})")
        extra = [c for c in names if c != column]
        try:
            validate_metadata(dict.fromkeys(extra))
        except StoreError as e:
            raise ValueError(f"{path}: its other columns become metadata, but {e}") from e
        for rows in batches:
            for i, value in enumerate(rows[column]):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{path}: row {row} has no {column}")
                meta = {c: rows[c][i] for c in extra if rows[c][i] is not None}
                yield Entry(_resolve(fs, folder, value), value, meta | _metadata(root, value, True))
                row += 1


def _open_table(f, path: str) -> tuple[list[str], Iterator[dict[str, list[Any]]]]:
    """A Parquet or CSV table's column names, and its rows in batches of columns."""
    import pyarrow as pa

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.ParquetFile(f)
        batches: Iterable[Any] = table.iter_batches(batch_size=LIST_BATCH)
        names = table.schema_arrow.names
    else:
        import pyarrow.csv as pcsv

        batches = reader = pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK))
        names = reader.schema.names

    def rows() -> Iterator[dict[str, list[Any]]]:
        try:
            for batch in batches:
                yield batch.to_pydict()
        except pa.ArrowInvalid as e:  # a CSV column whose type changes after the first block
            raise ValueError(f"{path} could not be read: {e}") from e

    return names, rows()


def _resolve(fs, folder: PurePosixPath, value: str) -> str:
    """A list's path as a URL: URLs and absolute paths as they are, others relative to the list."""
    if "://" in value or value.startswith("/"):
        return value
    return _url(fs, str(folder / value))


def read_entries(entries: list[Entry]) -> list[bytes | Exception]:
    """The bytes of each entry, in order, or the error that kept it from being read (it fails alone).

    Files and byte ranges of one file system are fetched in one `cat_ranges` call (concurrent on object
    stores); members of compressed archives by one pass through each archive."""
    out: list[bytes | Exception | None] = [None] * len(entries)
    direct: dict[str, list[int]] = defaultdict(list)  # protocol → positions
    streamed: dict[str, list[int]] = defaultdict(list)  # archive → positions
    for i, e in enumerate(entries):
        (streamed[e.url] if e.sequential else direct[e.url.split("://")[0] if "://" in e.url else ""]).append(i)
    for positions in direct.values():
        fs, _ = _filesystem(entries[positions[0]].url)
        paths = [_filesystem(entries[i].url)[1] for i in positions]
        got = fs.cat_ranges(paths, [entries[i].start for i in positions], [entries[i].end for i in positions])
        for i, data in zip(positions, got):
            out[i] = data
    for url, positions in streamed.items():
        for i, data in zip(positions, _read_members(url, [entries[i].member or "" for i in positions])):
            out[i] = data
    return [x if x is not None else OSError("not read") for x in out]


def _read_members(url: str, members: list[str]) -> list[bytes | Exception]:
    """Members of a (compressed) archive, read in one pass that stops after the last one wanted."""
    fs, path = _filesystem(url)
    wanted = set(members)
    found: dict[str, bytes | Exception] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if m.name in wanted:
                    data = tar.extractfile(m)
                    found[m.name] = data.read() if data else b""
                    if len(found) == len(wanted):
                        break
    except (OSError, tarfile.TarError) as e:
        return [found.get(m, e) for m in members]
    return [found.get(m, FileNotFoundError(f"{m} is not in {url}")) for m in members]


def _filesystem(url: str):
    """(fsspec file system, path in it) of a local path or URL."""
    try:
        import fsspec
    except ImportError as e:  # the ray extra brings it
        raise ImportError("reading sources needs fsspec: pip install -e '.[ray]'") from e
    return fsspec.core.url_to_fs(url)


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _url(fs, path: str) -> str:
    """A path of `fs` as something `_filesystem` opens again (on any machine of the cluster)."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _root(fs, path: str) -> PurePath:
    """What collection metadata is named after: a local path (resolved once) or the path inside the store."""
    return Path(path).resolve() if _is_local(fs) else PurePosixPath(path.rstrip("/"))

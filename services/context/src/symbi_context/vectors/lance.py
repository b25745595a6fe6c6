"""The second embedded backend: LanceDB (the Lance columnar format) under ``vector_data_path``.

``vector_backend = "lancedb"``. One Lance table holds each point's id, dense vector, keyword vector (term ids and
weights), the filtered payload keys as columns and the whole payload as JSON. Filters become LanceDB SQL
(prefiltered, so a limit counts matching points only). Dense search is exact (a flat cosine scan, which LanceDB
runs vectorised); keyword search scores BM25 with IDF over the whole collection, as Qdrant's IDF modifier does
(document frequencies are counted once per table version, then each query scans only the points it filters to).
Vector quantization is not offered by this backend: the settings refuse it. ``optimize`` compacts the files and
removes old table versions, so deleted rows leave the disk too. Engine calls run in worker threads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from symbi_context.errors import DimensionMismatch, VectorStoreError
from symbi_context.vectors.files import private_dir, restrict_tree
from symbi_context.vectors.port import (
    NEVER,
    Hit,
    MetaFilter,
    Quantization,
    SparseVector,
    VectorPoint,
    checked_vector,
    in_thread,
)

_TABLE = "symbi_context"
_POSITION_FILE = "symbi-position"
_COLUMNS = ("owner", "kind", "task_id", "document_id")
_LISTS = ("tags", "terms")


def _sql(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _strings(values: Sequence[Any]) -> str:
    return ", ".join(_sql(str(v)) for v in values)


def _leaves(prefix: str, value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _leaves(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif not isinstance(value, list):
        out.append(f"{prefix}={json.dumps(value, sort_keys=True)}")


def lance_filter(where: MetaFilter | None) -> str | None:
    """``where`` as a LanceDB SQL predicate (None: no condition)."""
    if where is None:
        return None
    must: list[str] = []
    if where.owners:
        must.append(f"owner IN ({_strings(where.owners)})")
    if where.kinds:
        must.append(f"kind IN ({_strings(where.kinds)})")
    for key, value in where.equals.items():
        if key in _COLUMNS:
            must.append(f"{key} = {_sql(str(value))}")
        else:
            must.append(f"array_has(leaves, {_sql(f'{key}={json.dumps(value, sort_keys=True)}')})")
    if where.tags_any:
        must.append(f"array_has_any(tags, [{_strings(where.tags_any)}])")
    for key, values in where.any_of:
        if key in _LISTS:
            must.append(f"array_has_any({key}, [{_strings(values)}])")
        elif key in _COLUMNS:
            must.append(f"{key} IN ({_strings(values)})")
        else:
            leaves = [f"{key}={json.dumps(v)}" for v in values]
            must.append(f"array_has_any(leaves, [{_strings(leaves)}])")
    if where.created_from is not None:
        must.append(f"created_at >= {float(where.created_from)!r}")
    if where.created_to is not None:
        must.append(f"created_at <= {float(where.created_to)!r}")
    if where.alive_at is not None:
        must.append(f"expires_at > {float(where.alive_at)!r}")
    if where.expired_by is not None:
        must.append(f"expires_at <= {float(where.expired_by)!r}")
    if where.ids:
        must.append(f"id IN ({_strings(where.ids)})")
    return " AND ".join(f"({c})" for c in must) if must else None


class LanceVectorStore:
    """A LanceDB table in ``path`` (created on first use)."""

    def __init__(self, path: str | Path, dimension: int, *, quantization: Quantization = "none") -> None:
        if quantization != "none":
            raise VectorStoreError(f"the lancedb backend has no {quantization} quantization; use 'none'")
        self.path = Path(path)
        self._dimension = dimension
        self._lock = threading.Lock()
        self._df: tuple[int, int, Counter[int]] | None = None
        self._schema = pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("dense", pa.list_(pa.float32(), dimension)),
                pa.field("kw_idx", pa.list_(pa.uint32())),
                pa.field("kw_val", pa.list_(pa.float32())),
                *(pa.field(c, pa.string()) for c in _COLUMNS),
                *(pa.field(c, pa.list_(pa.string())) for c in _LISTS),
                pa.field("leaves", pa.list_(pa.string())),
                pa.field("created_at", pa.float64()),
                pa.field("expires_at", pa.float64()),
                pa.field("payload", pa.string()),
            ]
        )
        try:
            private_dir(self.path)
            self._db = lancedb.connect(str(self.path / "lance"))
            self._table = self._open_table()
        except VectorStoreError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"cannot open the lancedb store in {self.path}: {exc}") from exc
        restrict_tree(self.path)

    def _open_table(self) -> Any:
        if _TABLE in self._db.list_tables().tables:
            table = self._db.open_table(_TABLE)
            field = table.schema.field("dense")
            size = field.type.list_size
            if size != self._dimension:
                raise DimensionMismatch(expected=size, got=self._dimension, what=f"table {_TABLE}")
            return table
        return self._db.create_table(_TABLE, schema=self._schema)

    @property
    def dimension(self) -> int:
        return self._dimension

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await in_thread("lancedb", fn, *args)

    def _check(self, vector: npt.NDArray[np.float32], what: str) -> list[float]:
        return checked_vector(vector, self._dimension, what)

    # --- writes ---------------------------------------------------------------------------------------------

    def _rows(self, points: Sequence[VectorPoint]) -> pa.Table:
        rows: dict[str, list[Any]] = {name: [] for name in self._schema.names}
        for p in points:
            leaves: list[str] = []
            _leaves("", p.payload, leaves)
            rows["id"].append(p.id)
            rows["dense"].append(self._check(p.vector, f"point {p.id}"))
            rows["kw_idx"].append(list(p.keywords.indices))
            rows["kw_val"].append(list(p.keywords.values))
            for c in _COLUMNS:
                v = p.payload.get(c)
                rows[c].append(None if v is None else str(v))
            for c in _LISTS:
                rows[c].append([str(t) for t in p.payload.get(c, [])])
            rows["leaves"].append(leaves)
            rows["created_at"].append(float(p.payload.get("created_at", 0.0)))
            rows["expires_at"].append(float(p.payload.get("expires_at", NEVER)))
            rows["payload"].append(json.dumps(p.payload))
        return pa.Table.from_pydict(rows, schema=self._schema)

    def _upsert(self, points: Sequence[VectorPoint]) -> None:
        data = self._rows(points)
        with self._lock:
            self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    async def upsert(self, points: Sequence[VectorPoint]) -> None:
        if points:
            await self._run(self._upsert, points)

    def _delete(self, predicate: str) -> None:
        with self._lock:
            self._table.delete(predicate)

    async def delete(self, ids: Sequence[str]) -> None:
        if ids:
            await self._run(self._delete, f"id IN ({_strings(ids)})")

    async def delete_where(self, where: MetaFilter) -> None:
        predicate = lance_filter(where)
        if predicate is None:
            raise VectorStoreError("refusing to delete with an empty filter; use reset() to clear the store")
        await self._run(self._delete, predicate)

    # --- reads ----------------------------------------------------------------------------------------------

    @staticmethod
    def _hit(row: dict[str, Any], score: float) -> Hit:
        return Hit(str(row["id"]), score, json.loads(row["payload"]))

    def _search(self, query: list[float], predicate: str | None, limit: int) -> list[Hit]:
        q = self._table.search(query, vector_column_name="dense").distance_type("cosine").select(["id", "payload"])
        if predicate:
            q = q.where(predicate, prefilter=True)
        rows = q.limit(limit).to_arrow().to_pylist()
        return [self._hit(r, 1.0 - float(r["_distance"])) for r in rows]

    async def search(
        self, vector: npt.NDArray[np.float32], *, where: MetaFilter | None = None, limit: int = 10, exact: bool = False
    ) -> list[Hit]:
        query = self._check(vector, "query vector")
        return list(await self._run(self._search, query, lance_filter(where), limit))

    def _scan(self, predicate: str | None, columns: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        q = self._table.search().select(columns)
        if predicate:
            q = q.where(predicate)
        rows: list[dict[str, Any]] = q.limit(limit).to_arrow().to_pylist()
        return rows

    def _frequencies(self) -> tuple[int, Counter[int]]:
        """Points and, per term, how many points have it: computed once per table version."""
        version = self._table.version
        if self._df is None or self._df[0] != version:
            rows = self._scan(None, ["kw_idx"])
            df: Counter[int] = Counter()
            for row in rows:
                df.update(set(row["kw_idx"] or ()))
            self._df = (version, len(rows), df)
        return self._df[1], self._df[2]

    def _search_keywords(self, query: SparseVector, predicate: str | None, limit: int) -> list[Hit]:
        weights = dict(zip(query.indices, query.values, strict=True))
        n, df = self._frequencies()
        idf = {t: math.log((n - df[t] + 0.5) / (df[t] + 0.5) + 1.0) for t in weights}
        scored: list[tuple[float, dict[str, Any]]] = []
        for row in self._scan(predicate, ["id", "kw_idx", "kw_val", "payload"]):
            score = sum(
                weights[t] * float(v) * idf[t]
                for t, v in zip(row["kw_idx"], row["kw_val"], strict=True)
                if t in weights
            )
            if score > 0:
                scored.append((score, row))
        scored.sort(key=lambda s: (-s[0], s[1]["id"]))
        return [self._hit(r, s) for s, r in scored[:limit]]

    async def search_keywords(
        self, query: SparseVector, *, where: MetaFilter | None = None, limit: int = 10
    ) -> list[Hit]:
        if not query.indices:
            return []
        return list(await self._run(self._search_keywords, query, lance_filter(where), limit))

    def _scroll(self, predicate: str | None, limit: int) -> list[Hit]:
        rows = sorted(self._scan(predicate, ["id", "payload"]), key=lambda r: str(r["id"]))
        return [self._hit(r, 0.0) for r in rows[:limit]]

    async def scroll(self, where: MetaFilter | None = None, *, limit: int = 10_000) -> list[Hit]:
        return list(await self._run(self._scroll, lance_filter(where), limit))

    async def count(self, where: MetaFilter | None = None) -> int:
        return int(await self._run(self._table.count_rows, lance_filter(where)))

    # --- position, maintenance ------------------------------------------------------------------------------

    async def position(self) -> int:
        file = self.path / _POSITION_FILE
        return int(file.read_text()) if file.exists() else 0

    def _set_position(self, sequence: int) -> None:
        tmp = self.path / f"{_POSITION_FILE}.tmp"
        tmp.write_text(str(sequence))
        tmp.chmod(0o600)
        os.replace(tmp, self.path / _POSITION_FILE)

    async def set_position(self, sequence: int) -> None:
        await self._run(self._set_position, sequence)

    def _optimize(self) -> None:
        with self._lock, warnings.catch_warnings():
            # Only this process uses the table, so every older version can go (and deleted rows with them).
            warnings.simplefilter("ignore", UserWarning)
            self._table.optimize(cleanup_older_than=timedelta(0))
        restrict_tree(self.path)

    async def optimize(self) -> None:
        await self._run(self._optimize)

    def _reset(self) -> None:
        with self._lock:
            shutil.rmtree(self.path / "lance", ignore_errors=True)
            (self.path / _POSITION_FILE).unlink(missing_ok=True)
            self._db = lancedb.connect(str(self.path / "lance"))
            self._table = self._open_table()
            self._df = None  # the new table's versions start again

    async def reset(self) -> None:
        await self._run(self._reset)

    def _close(self) -> None:
        restrict_tree(self.path)

    async def close(self) -> None:
        await self._run(self._close)

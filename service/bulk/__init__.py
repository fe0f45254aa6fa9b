"""Bulk indexing beyond one process: `afv index build --engine ray`.

A build lists its source in a fixed order (`sources`), cuts the listing into shards (`shards`), has a
Ray Data pipeline decode and sketch the shards not yet on disk (`stages`, `ray_engine`), and adds the
shards to an index that `afv serve` opens (`assemble`); `build` runs these steps in order. Ray and fsspec
are imported only inside the functions that use them, so `afv` starts without them.
"""

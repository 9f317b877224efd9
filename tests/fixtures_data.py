"""Writers for tiny datasets in their official layouts, and a local HTTP server for download
tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import functools
import gzip
import lzma
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

WISDM_KEY = "walking = A\njogging = B\nstairs = C\nsitting = D\n"


class Server:
    """A local HTTP server on 127.0.0.1 serving ``root``, recording request paths."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def write_image_folder(root: Path, per_class: int = 5, size: int = 8) -> Path:
    """Two classes of plain-coloured ``size`` x ``size`` PNGs in ``root/<class>/``."""
    from PIL import Image

    for cls, color in (("a", (255, 0, 0)), ("b", (0, 255, 0))):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), color).save(root / cls / f"{i}.png")
    return root


def write_text(path: Path, text: str, compress: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress == "gz":
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="ascii") as f:
            f.write(text)
    elif compress == "xz":
        path = path.with_name(path.name + ".xz")
        with lzma.open(path, "wt", encoding="ascii") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="ascii")
    return path


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent).as_posix())
    return archive


def wisdm_lines(subject: int, activity: str, t0: int, n: int, offset: float, period=50_000_000):
    """``n`` readings of one activity: x = offset + sample index, so values identify samples."""
    return [
        f"{subject},{activity},{t0 + i * period},{offset + i:.1f},{-offset:.1f},{i % 7:.1f};"
        for i in range(n)
    ]


def write_wisdm_2019(
    base: Path, subjects=(1600, 1601, 1602), n: int = 50, compress: str | None = "xz"
) -> Path:
    """``base/wisdm-dataset`` with watch accel+gyro for each subject and activities A, B, C.

    The gyro stream of each activity is shifted by +3 ms (within the alignment tolerance) and
    lacks its first sample, so alignment has to pair by timestamp, not by line number.
    """
    ds = base / "wisdm-dataset"
    (ds).mkdir(parents=True, exist_ok=True)
    (ds / "activity_key.txt").write_text(WISDM_KEY)
    for s in subjects:
        accel, gyro = [], []
        for k, act in enumerate("ABC"):
            t0 = 10**12 * (k + 1) + s * 10**6
            accel += wisdm_lines(s, act, t0, n, offset=1000 * k)
            gyro += wisdm_lines(s, act, t0 + 3_000_000, n, offset=-1000 * k - 500)[1:]
        write_text(
            ds / "raw/watch/accel" / f"data_{s}_accel_watch.txt", "\n".join(accel) + "\n", compress
        )
        write_text(
            ds / "raw/watch/gyro" / f"data_{s}_gyro_watch.txt", "\n".join(gyro) + "\n", compress
        )
    return ds


V11_MALFORMED = [
    "33,Jogging,49106062271000,5.012288,11.264028,;",  # empty z
    "33,Jogging,49106112167000",  # missing fields
    "33,Jogging,49106162000000,1.0,2.0,3.0,4.0;",  # an extra field
    "33,Jogging,abc,1.0,2.0,3.0;",  # not a timestamp
]


def write_wisdm_v11(base: Path, n: int = 40) -> tuple[Path, int]:
    """``base/WISDM_ar_v1.1/WISDM_ar_v1.1_raw.txt``: users 33 and 34, Jogging then Walking,
    with the malformed lines above spliced in. Returns (file, number of good records)."""
    lines: list[str] = []
    good = 0
    for user in (33, 34):
        for k, act in enumerate(("Jogging", "Walking")):
            block = wisdm_lines(user, act, 49_000_000_000_000 + k * 10**12, n, offset=100 * k)
            lines += block
            good += len(block)
    lines[5:5] = V11_MALFORMED
    # Two records glued on one line (as in the real file): both are good records.
    lines[20] = lines[20] + lines[21]
    del lines[21]
    path = base / "WISDM_ar_v1.1" / "WISDM_ar_v1.1_raw.txt"
    write_text(path, "\n".join(lines) + "\n")
    return path, good


def ts_text(
    cases: list[tuple[list[list[float]], str]], labels: list[str], equal: bool = True
) -> str:
    dims = len(cases[0][0])
    head = [
        "#comment line",
        "@problemName Toy",
        "@timeStamps false",
        "@missing true",
        "@univariate " + ("true" if dims == 1 else "false"),
        f"@dimensions {dims}",
        "@equalLength " + ("true" if equal else "false"),
        "@classLabel true " + " ".join(labels),
        "@data",
    ]
    body = [
        ":".join(",".join("?" if np.isnan(v) else repr(float(v)) for v in d) for d in dims_)
        + f":{label}"
        for dims_, label in cases
    ]
    return "\n".join(head + body) + "\n"

"""Load test of ``reprlab serve``: /search throughput and latency at concurrency 1, 8 and 32, against
calling the library in-process, on SciFact.

The peer is the in-process batch encoder doing the same work per query as the service:
``DenseRetriever.search(all queries, k=10)`` (queries encoded in batches of ``--batch-size``, then
one FAISS search) and the same hit fields the service returns (``reprlab.serve.service.hit``: id,
score, title, snippet; highlighted snippets only with ``--highlight``, which the service's requests
then ask for too), timed over >= 3 passes. The
service is ``reprlab serve`` on 127.0.0.1 (a subprocess, stopped at the end), searched by a small
asyncio HTTP/1.1 client with one keep-alive connection per concurrent user (a closed loop: each
user sends its next query when the previous answer arrives). Every level sends a fixed number of
requests and stops early at ``--max-seconds``; each level runs ``--repeat`` (>= 3) passes, the
median requests/s and the latency percentiles over all its requests are kept. The library's passes
and the levels' passes are interleaved (pass r: the library, then every level once), so that a
change of load on the shared machine hits both sides alike. Client and server
share the machine's cores, as they would on one host; the CPU seconds each used per request are
recorded (the client's own, the server's in all its threads and in its event-loop thread, from
/proc), so that a reader sees what the client cost and where the server's time went.

    python bench/serve.py                 # SciFact (5,183 documents, its 300 judged test queries), CPU
    python bench/serve.py --backend onnx-int8
    python bench/serve.py --quick         # 300 documents, 60 queries, short levels

Only 127.0.0.1 is used; the server is killed if anything fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

import common

HOST = "127.0.0.1"
LEVELS = (1, 8, 32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     parents=[common.bench_options(device=None, work_dir="/tmp/reprlab-bench-serve")])
    parser.add_argument("--data", type=Path, default=common.data_path("scifact", "beir", check=False))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx-int8"))
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent users")
    parser.add_argument("--requests", type=int, default=900, help="requests per pass of a level")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="a pass stops after this long")
    parser.add_argument("--repeat", type=int, default=3, help="passes per level (>= 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of the in-process encoder and "
                        "the service's largest batch")
    parser.add_argument("--server-max-batch", type=int, default=None,
                        help="the service's largest batch (default --batch-size)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server process only (repeatable)")
    parser.add_argument("--server-args", default="", help="more `reprlab serve` options, one string")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--highlight", action="store_true", help="requests ask for highlighted snippets "
                        "(the in-process side computes them too); default: plain snippets on both sides")
    parser.add_argument("--doc-vectors", type=Path, default=None,
                        help="an .npz of the corpus' vectors from the same model (arrays doc_ids and docs, as "
                        "bench/scale.py caches them in its --work-dir): the index is built from them instead of "
                        "encoding the corpus again (the vectors must list the corpus' ids in its order)")
    args = common.parse(parser, argv)
    common.require(args.data, "--data")
    if args.quick:
        args.requests, args.max_seconds = min(args.requests, 90), min(args.max_seconds, 20.0)
    return args


def prepare(args):
    """(index folder, query texts): SciFact's corpus indexed once into --work-dir (reused when present)."""
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.text.beir import load_beir

    data = load_beir(args.data, split="test")
    if args.quick:
        data = common.subsample(data, 60, 240)
    queries = eval_queries(data)
    folder = args.work_dir / f"index-{Path(str(args.model)).name}-{len(data.corpus)}"
    if not (folder / "retriever.json").is_file():
        retriever = DenseRetriever.from_model(args.model, batch_size=args.batch_size)
        if args.doc_vectors is None:
            retriever.index_corpus(data.corpus, show_progress=True)
        else:
            index_from_vectors(retriever, data.corpus, args.doc_vectors)
        retriever.save(folder)
    return folder, queries


def eval_queries(data) -> list[str]:
    """The texts of the judged queries of the split (``load_beir`` returns every query of queries.jsonl: for
    SciFact 1,109, of which 300 are judged in test), so the service and the library get the same queries."""
    return [data.queries[q] for q in sorted(data.judged_queries())]


def index_from_vectors(retriever, corpus, path: Path) -> None:
    """Fill ``retriever``'s exact index with the cached vectors of ``corpus`` (what ``index_corpus`` would encode)."""
    from reprlab.retrieval.index import FaissIndex

    saved = np.load(path)
    ids = list(corpus)
    if [str(i) for i in saved["doc_ids"]] != ids:
        raise SystemExit(f"--doc-vectors {path}: its doc_ids are not the corpus' ids in the corpus' order")
    vectors = np.ascontiguousarray(saved["docs"], dtype=np.float32)  # (N, d)
    retriever.index = FaissIndex(vectors.shape[1])
    retriever.index.add(ids, vectors)
    retriever.docs = {i: {"title": corpus[i].get("title", ""), "text": corpus[i].get("text", "")} for i in ids}


def library_pass(args, folder: Path, queries: list[str]):
    """One pass of the library (a function to time): the whole query set searched in one call (batched
    encoding), and each query's hits built as the service builds them."""
    from reprlab.encoder import SentenceEncoder
    from reprlab.retrieval.dense import DenseRetriever
    from reprlab.serve.highlight import query_terms
    from reprlab.serve.service import hit

    model = None
    if args.backend != "torch":
        model = SentenceEncoder.from_pretrained(args.work_dir / "onnx", backend=args.backend)
    retriever = DenseRetriever.load(folder, model=model)
    retriever.batch_size = args.batch_size
    docs = retriever.docs

    def search_and_respond():
        scores, ids = retriever.search(queries, k=args.k)  # (Q, k), (Q, k)
        return [[hit(rank, d, s, docs.get(d, {}), query_terms(q) if args.highlight else None)
                 for rank, (d, s) in enumerate(zip(row_ids, row_scores), 1) if d is not None]
                for q, row_ids, row_scores in zip(queries, ids, scores)]

    return search_and_respond


# ----------------------------------------------------------------------------- the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(args, folder: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "reprlab.cli", "--quiet", "serve", "--index", str(folder), "--host", HOST,
           "--port", str(port), "--backend", args.backend,
           "--max-batch", str(args.server_max_batch or args.batch_size), *args.server_args.split()]
    if args.backend != "torch":
        cmd += ["--onnx-model", str(args.work_dir / "onnx")]
    env = {**os.environ, **dict(item.split("=", 1) for item in args.server_env)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2):
                return proc
        except OSError:
            if time.time() > deadline:
                stop_server(proc)
                raise SystemExit("the server did not answer /health in 300 s")
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def user(port: int, bodies: list[bytes], deadline: float, out: list) -> None:
    """One closed-loop user on one keep-alive connection: send, read the whole answer, send the next."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for body in bodies:
            if time.perf_counter() > deadline:
                break
            head = (f"POST /search HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            header = await reader.readuntil(b"\r\n\r\n")
            lines = header.decode("latin-1").split("\r\n")
            length = next(int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length")
            await reader.readexactly(length)
            out.append((int(lines[0].split()[1]), time.perf_counter() - t0))
    finally:
        writer.close()


async def load(port: int, queries: list[str], users: int, n: int, k: int, max_seconds: float,
               highlight: bool = False) -> dict:
    bodies = [json.dumps({"query": queries[i % len(queries)], "k": k, "highlight": highlight}).encode()
              for i in range(n)]
    out: list = []
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    await asyncio.gather(*(user(port, bodies[u::users], deadline, out) for u in range(users)))
    seconds = time.perf_counter() - t0
    ok = [s for status, s in out if status == 200]
    return {"requests": len(out), "ok": len(ok), "seconds": seconds, "rps": len(ok) / seconds, "latency_s": ok}


def server_encoder(port: int) -> dict:
    """The service's query encoder set-up (from ``GET /stats``): backend, workers, threads per worker."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/stats", timeout=10) as response:
        stats = json.loads(response.read())
    return {"backend": stats["backend"], "encode_workers": stats.get("encode_workers"),
            "encode_threads": stats.get("encode_threads")}


def batch_counts(port: int) -> tuple[int, int, float]:
    """(batches, texts, busy seconds) of the service's query batcher so far (from ``GET /stats``)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/stats", timeout=10) as response:
        stats = json.loads(response.read())
    return int(stats["batches"]), int(stats["batched_texts"]), float(stats.get("batch_seconds", "nan"))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(all threads, the main thread: the event loop) CPU seconds of process ``pid`` so far (Linux /proc)."""
    def read(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    try:
        return read(f"/proc/{pid}/stat"), read(f"/proc/{pid}/task/{pid}/stat")
    except (OSError, IndexError, ValueError):
        return float("nan"), float("nan")


def run_interleaved(args, port: int, queries: list[str], server_pid: int, library) -> tuple[dict, list[dict]]:
    """(library timing, one row per level). Pass r times the library once, then one pass of every level
    (in reverse order every other pass), so that a change of load on the shared machine hits both sides
    alike; the server is idle while the library runs."""
    library()  # warm-up of both sides
    asyncio.run(load(port, queries, 4, 40, args.k, 30, args.highlight))
    lib_wall, lib_cpu = [], []
    levels: dict[int, dict] = {u: {"passes": [], "counts": np.zeros(8)} for u in args.levels}
    for r in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        library()
        lib_wall.append(time.perf_counter() - start)
        lib_cpu.append(time.process_time() - cpu_start)
        for users in args.levels if r % 2 == 0 else args.levels[::-1]:
            before = (*batch_counts(port), *cpu_seconds(server_pid), time.process_time())
            levels[users]["passes"].append(asyncio.run(load(port, queries, users, args.requests, args.k,
                                                            args.max_seconds, args.highlight)))
            after = (*batch_counts(port), *cpu_seconds(server_pid), time.process_time())
            levels[users]["counts"][:6] += np.subtract(after, before)
    timing = common.Timing.of(lib_wall, cpu=lib_cpu)
    library_record = {"queries": len(queries), "qps": len(queries) / timing["median"], "timing": timing.rounded(),
                      "cpu_ms_per_query": 1000 * timing["cpu"]["median"] / len(queries)}
    print(f"in-process: {library_record['qps']:.1f} queries/s", file=sys.stderr)
    return library_record, [level_row(users, levels[users]["passes"], levels[users]["counts"]) for users in args.levels]


def level_row(users: int, passes: list[dict], counts) -> dict:
    """A level's row: median requests/s of its passes, latency percentiles over all its requests, and per
    request: the client's and the server's CPU, the server's event-loop CPU and the encoder's busy time."""
    batches, texts, busy, server_cpu, loop_cpu, client_cpu = counts[:6]
    sent = sum(p["requests"] for p in passes)
    cpu = {"client_cpu_ms": 1000 * client_cpu / sent, "server_cpu_ms": 1000 * server_cpu / sent,
           "server_loop_cpu_ms": 1000 * loop_cpu / sent, "encoder_busy_ms": 1000 * busy / sent,
           "wall_ms": 1000 * sum(p["seconds"] for p in passes) / sent}
    ms = np.array([s for p in passes for s in p.pop("latency_s")]) * 1000
    rps = [p["rps"] for p in passes]
    row = {"concurrency": users, "rps": statistics.median(rps), "rps_passes": [round(r, 2) for r in rps],
           "spread": (max(rps) - min(rps)) / statistics.median(rps), "failed": sum(p["requests"] - p["ok"] for p in passes),
           "requests": sent, "mean_batch": texts / max(1, batches),
           **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}, "per_request": cpu}
    print(f"concurrency {users}: {row['rps']:.1f} req/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
          f"mean batch {row['mean_batch']:.1f}; per request: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()),
          file=sys.stderr)
    return row


def markdown(record: dict) -> str:
    base = record["in_process"]["qps"]
    lib = record["in_process"]
    lines = ["| caller | concurrency | queries/s (spread) | vs in-process | p50 ms | p95 ms | p99 ms | mean batch | "
             "failed | CPU ms/query: client / server (event loop) |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| library, in-process batch (batch {record['batch_size']}) | - | {base:.1f} "
             f"({lib['timing']['spread']:.0%}) | 1.00x | - | - | - | {record['batch_size']} | - | "
             f"- / {lib.get('cpu_ms_per_query', float('nan')):.2f} |"]
    for r in record["service"]:
        c = r.get("per_request", {})
        lines.append(f"| reprlab serve ({record['backend']}) | {r['concurrency']} | {r['rps']:.1f} "
                     f"({r['spread']:.0%}) | {r['rps'] / base:.2f}x | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['mean_batch']:.1f} | {r['failed']} | {c.get('client_cpu_ms', float('nan')):.2f} / "
                     f"{c.get('server_cpu_ms', float('nan')):.2f} ({c.get('server_loop_cpu_ms', float('nan')):.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folder, queries = prepare(args)
    if args.backend != "torch" and not (args.work_dir / "onnx" / "onnx.json").is_file():
        from reprlab.encoder import SentenceEncoder
        from reprlab.onnx import export_onnx

        export_onnx(SentenceEncoder.from_pretrained(args.model), args.work_dir / "onnx", int8=True, source=args.model)
    library = library_pass(args, folder, queries)
    port = free_port()
    proc = start_server(args, folder, port)
    try:
        server = server_encoder(port)
        library, rows = run_interleaved(args, port, queries, proc.pid, library)
    finally:
        stop_server(proc)
    record = {"documents": int(folder.name.rsplit("-", 1)[1]), "queries": len(queries), "backend": args.backend,
              "batch_size": args.batch_size, "k": args.k, "highlight": args.highlight, "quick": args.quick,
              "in_process": library, "service": rows, "server_encoder": server,
              "settings": common.settings(args)}
    print(markdown(record))
    name = ("serve" if args.backend == "torch" else f"serve-{args.backend}") + ("-highlight" if args.highlight else "")
    return common.write_result(name, record, args, argv)


if __name__ == "__main__":
    main()

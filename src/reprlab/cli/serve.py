"""``reprlab serve`` and ``reprlab export onnx``: the HTTP service, and ONNX export for a fast CPU backend.

    reprlab serve --index INDEX_DIR [--multihop-index DIR] [--reader DIR] [--host 127.0.0.1 --port 8000]
                  [--backend torch|onnx|onnx-int8 [--onnx-model DIR]] [--watch ANCE_OUT/ance]
    reprlab export onnx --model MODEL_DIR --out DIR [--int8] [--exporter torchscript|dynamo]

``serve`` runs until interrupted (uvicorn); its options come from :class:`reprlab.serve.ServeConfig`.
"""

from __future__ import annotations

import logging

from reprlab.errors import ReprlabError, require
from reprlab.io import check_output

logger = logging.getLogger("reprlab")


def cmd_serve(args) -> None:
    from reprlab.cli.options import config_from_args
    from reprlab.serve import ServeConfig, Service, create_app

    config: ServeConfig = config_from_args(args.options, args)
    if not 0 < args.port < 65536:
        raise ReprlabError(f"--port must be in 1..65535, got {args.port}")
    if args.max_connections < 1:
        raise ReprlabError(f"--max-connections must be at least 1, got {args.max_connections}")
    _check_address(args.host, args.port)  # before loading anything: a busy port or a bad host fails at once
    uvicorn = require("uvicorn", "serve")
    require("fastapi", "serve")
    service = Service.from_config(config)
    version = service.slot.current
    logger.info(f"serving {version.name} ({len(version.index)} documents, {config.backend} encoder) "
                f"on http://{args.host}:{args.port}/ (OpenAPI at /docs)")
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning", access_log=False,
                limit_concurrency=args.max_connections, timeout_keep_alive=5)  # uvloop and httptools when installed


def _check_address(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ReprlabError(f"--host {host}: cannot be resolved ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise ReprlabError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def cmd_export_onnx(args) -> None:
    from reprlab.encoder import SentenceEncoder
    from reprlab.onnx import export_onnx

    if args.max_length is not None and args.max_length < 2:
        raise ReprlabError(f"--max-length must be at least 2 ([CLS] and [SEP]), got {args.max_length}")
    check_output(args.out, "folder")
    require("onnxruntime", "onnx")
    model = SentenceEncoder.from_pretrained(args.model, max_length=args.max_length)
    out = export_onnx(model, args.out, int8=args.int8, exporter=args.exporter, source=args.model)
    print(f"wrote {out} (load it with SentenceEncoder.from_pretrained(DIR, backend='onnx{'-int8' if args.int8 else ''}')"
          f" or `reprlab serve --backend onnx{'-int8' if args.int8 else ''} --onnx-model {out}`)")


def add_commands(sub) -> None:
    from reprlab.cli.options import add_config_options
    from reprlab.onnx import EXPORTERS
    from reprlab.serve.config import ServeConfig

    p = sub.add_parser("serve", help="serve search, multi-hop retrieval and QA over HTTP, with a web page at /")
    options = add_config_options(p, ServeConfig)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    g.add_argument("--max-connections", type=int, default=256,
                   help="concurrent connections before new ones get 503 (default: 256)")
    p.set_defaults(func=cmd_serve, options=options)

    export = sub.add_parser("export", help="export a model for another runtime")
    targets = export.add_subparsers(dest="target", required=True, parser_class=type(export))
    o = targets.add_parser("onnx", help="ONNX (fp32, and int8 with --int8) for ONNX Runtime: --backend onnx")
    o.add_argument("--model", required=True, help="model folder or 'minilm' (required)")
    o.add_argument("--out", required=True, help="folder to write (required)")
    o.add_argument("--int8", action="store_true", help="also write the int8 graph (dynamic quantisation)")
    o.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torchscript: traced, fused by onnxruntime (fastest); dynamo: torch.export + onnxscript "
                        "(default: torchscript)")
    o.add_argument("--max-length", type=int, default=None, help="max tokens per text (default: the model's)")
    o.set_defaults(func=cmd_export_onnx)

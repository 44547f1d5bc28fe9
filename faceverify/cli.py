"""`faceverify` command line: argument parsing and exit codes only; the work is in the library.

Other packages add verbs through the `faceverify.commands` entry point (the web UI adds `serve`).
Exit codes: 0 success, 2 input error (one line on stderr, no traceback), 1 internal error.
`--json` writes machine-readable output on stdout; human messages go to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .errors import FaceVerifyError
from .policies import DETECTION_MAX_SIDE, DETECTOR_NAMES, POLICIES

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, not {text!r}")
    return int(text)


def _detector_name(text: str) -> str:
    from .detect.registry import FALLBACK, parse

    try:
        return FALLBACK.join(parse(text))
    except FaceVerifyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _detector_arg(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--detector", type=_detector_name, metavar="NAME",
                        help=f"{' | '.join(DETECTOR_NAMES)}, or e.g. retinaface>mtcnn (MTCNN where "
                             f"RetinaFace finds no face); default: {default_help}")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint (.pt) or ONNX (.onnx); default: bundled model")
    _detector_arg(parser, "the one the model was calibrated with")
    parser.add_argument("--device", help="torch device for a .pt model (default: cuda if available)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each face's embedding with its mirror image's (default: as the "
                             "model's thresholds were calibrated)")
    parser.add_argument("--min-face-fraction", type=float, default=0.0, metavar="F",
                        help="ignore faces smaller than F of the image's short side (faster detection)")
    parser.add_argument("--max-detection-side", type=_positive_int, default=DETECTION_MAX_SIDE, metavar="PX",
                        help="detect on a copy at most PX pixels a side (faster on large photos; "
                             f"default {DETECTION_MAX_SIDE})")
    parser.add_argument("--assume-cropped", action="store_true",
                        help="every photo is a face crop already (ID photos, thumbnails): take the "
                             "whole photo as the face, landmarks from MTCNN's last stage")
    parser.add_argument("--quality-floor", type=float, metavar="Q",
                        help="flag faces whose quality score is below Q as unreliable, and refuse "
                             "to enroll them (default: the model's floor)")


def _verifier(args, face_policy: str = "single"):
    from .verifier import Verifier

    return Verifier(args.model, detector=args.detector, device=args.device, face_policy=face_policy, flip=args.flip,
                    min_face_fraction=args.min_face_fraction, max_detection_side=args.max_detection_side,
                    quality_floor=args.quality_floor, assume_cropped=args.assume_cropped)


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="are two photos the same person?")
    p.add_argument("image_a", type=Path)
    p.add_argument("image_b", type=Path)
    p.add_argument("--threshold", type=float, help="override the model's calibrated threshold")
    p.add_argument("--face-policy", choices=POLICIES, default="single")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    verifier = _verifier(args, args.face_policy)
    result = verifier.verify(args.image_a, args.image_b, args.threshold)
    if args.json:
        print(json.dumps({**result.to_dict(), "detector": verifier.detector_name}, indent=2))
    else:
        verdict = "same person" if result.same else "different people"
        print(f"{verdict}: score {result.score:.4f} "
              f"{'>=' if result.same else '<'} threshold {result.threshold:.4f}{_unreliable(result)}")
    return EXIT_OK


def _unreliable(result) -> str:
    """What a decision's line adds when a face is below the quality floor (nothing otherwise)."""
    return "" if result.reliable else f" (unreliable: {'; '.join(result.problems)})"


def _ray_arg(p) -> None:
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on a Ray cluster (`pip install faceverify[ray]`; ONNX models): ADDRESS "
                        "of its head, 'auto' for the one `ray start` runs here, none for a local instance")
    p.add_argument("--ray-cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all)")


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embeddings of images (files or folders) into an .npz or Parquet file")
    p.add_argument("images", nargs="+", type=Path, help="image files, or folders of them (recursive)")
    p.add_argument("--out", required=True, type=Path,
                   help=".npz, or .parquet (a row per photo: status, box, landmarks, embedding); with "
                        "--ray a folder of Parquet parts, resumed if it exists")
    p.add_argument("--face-policy", choices=POLICIES, default="single")
    _ray_arg(p)
    _model_args(p)
    p.set_defaults(func=cmd_embed)


def _cluster(args, verifier=None):
    """The cluster module, connected, and the pipeline spec of the model asked for (`verifier`:
    that model, already loaded here)."""
    try:
        from . import cluster
    except ImportError as exc:
        raise FaceVerifyError(f"--ray needs Ray: pip install 'faceverify[ray]' ({exc.name or exc} is missing)") from None
    spec = cluster.PipelineSpec.for_model(args.model, verifier.metadata.weights_sha256 if verifier else None,
                                          args.detector or (verifier.detector_name if verifier else None),
                                          face_policy=args.face_policy, flip=args.flip,
                                          min_face_fraction=args.min_face_fraction,
                                          max_detection_side=args.max_detection_side,
                                          quality_floor=args.quality_floor, assume_cropped=args.assume_cropped)
    cluster.connect(args.ray or None, args.ray_cpus)
    return cluster, spec


def cmd_embed(args) -> int:
    if args.ray is not None:
        cluster, spec = _cluster(args)
        summary = cluster.embed_on_ray(args.images, args.out, spec)
        print(f"{summary.written} images processed ({summary.skipped} already in {args.out}); "
              f"{summary.failed} without an embedding in all", file=sys.stderr)
        return EXIT_OK
    import numpy as np
    from tqdm import tqdm

    from . import records
    from .data import image_paths
    from .verifier import FaceEmbedding

    args.images = image_paths(args.images)
    if not args.images:
        raise FaceVerifyError("no images found in the folders given")
    verifier = _verifier(args, args.face_policy)
    stream = verifier.analyze_stream(args.images, [str(p) for p in args.images])
    results = list(tqdm(stream, total=len(args.images), desc="embed", unit="img", disable=len(args.images) < 50))
    ok = [isinstance(r, FaceEmbedding) for r in results]
    if args.out.suffix == ".parquet":
        records.write_parquet([records.result_row(p, r, verifier.fingerprint)
                               for p, r in zip(args.images, results)], args.out)
    else:
        dim = verifier.metadata.embedding_dim
        np.savez(args.out, paths=np.array([str(p) for p in args.images]),
                 embeddings=np.stack([r.embedding if k else np.full(dim, np.nan, np.float32)
                                      for r, k in zip(results, ok)]),
                 ok=np.array(ok), status=np.array(["ok" if k else str(r) for r, k in zip(results, ok)]),
                 weights_sha256=verifier.metadata.weights_sha256, detector=verifier.detector_name,
                 fingerprint=verifier.fingerprint, flip=verifier.flip)
    for r, path in zip(results, args.images):
        if not isinstance(r, FaceEmbedding):
            print(f"warning: {r}", file=sys.stderr)
    print(f"{sum(ok)}/{len(ok)} images embedded -> {args.out}", file=sys.stderr)
    return EXIT_OK if any(ok) else EXIT_INPUT


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, AUC, EER, TAR@FAR on a pairs protocol or all "
                                        "pairs of a labelled set")
    p.add_argument("--pairs", type=Path, help="LFW pairs.txt or CSV left,right,same[,fold]")
    p.add_argument("--root", type=Path, help="folder the pair paths are relative to")
    p.add_argument("--identities", type=Path, help="instead of --pairs: a labelled set (manifest.csv "
                   "or identity folders) whose every pair is scored, e.g. LFW --split dev_eval")
    p.add_argument("--split", help="with --identities: only rows of this split")
    p.add_argument("--cache", type=Path, help="aligned crops of the set: read if present, else saved")
    p.add_argument("--face-policy", choices=POLICIES, default="central")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--roc", type=Path, help="write the ROC curve here (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _model_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    _check_evaluation_set(args)
    verifier = _verifier(args)
    if args.identities:
        return _evaluate_identities(args, verifier)
    from .metrics import plot_roc, verification_report

    aligned = _aligned_pairs(args, verifier)
    scores, valid = aligned.scores(verifier.embed_aligned, verifier.templates)
    report = verification_report(scores, aligned.same, aligned.folds, valid)
    print(report.summary(), file=sys.stderr)
    if args.json:
        _write_report(args, verifier, {**report.to_dict(), "failures": aligned.failures})
    if args.roc:
        plot_roc(scores, aligned.same, args.roc, valid, label=verifier.metadata.arch)
    return EXIT_OK


def _evaluate_identities(args, verifier) -> int:
    """Every genuine and impostor pair of a labelled set (LFW dev_eval: ~3M impostor pairs)."""
    from .metrics import all_pairs_report

    aligned = _aligned_identities(args, verifier)
    genuine, impostor = aligned.scores(verifier.embed_aligned, verifier.templates)
    report = all_pairs_report(genuine, impostor)
    tars = ", ".join(f"TAR@FAR={far}: " + (f"{hit['tar']:.4f}" if hit else "n/a")
                     for far, hit in report["tar_at_far"].items())
    print(f"{report['genuine_pairs']} genuine / {report['impostor_pairs']} impostor pairs "
          f"({len(aligned.failures)} photos without a face), AUC {report['auc']:.5f}, "
          f"EER {100 * report['eer']:.3f}%, {tars}", file=sys.stderr)
    if args.json:
        _write_report(args, verifier, {**report, "failures": aligned.failures})
    return EXIT_OK


def _check_evaluation_set(args) -> None:
    if bool(args.pairs) == bool(args.identities):
        raise FaceVerifyError("give --pairs FILE --root DIR, or --identities MANIFEST [--split NAME]")
    if args.pairs and args.root is None:
        raise FaceVerifyError("--pairs needs --root, the folder its paths are relative to")


def _aligned_pairs(args, verifier):
    """The pairs file's photos aligned once (from `--cache` when it exists, else saved there)."""
    from .data import read_pairs
    from .evaluation import AlignedPairs

    return _cached(args.cache, AlignedPairs, lambda: AlignedPairs.build(
        read_pairs(args.pairs, args.root), verifier.detector, args.face_policy, verifier.templates,
        progress=not args.quiet), verifier.detector_name)


def _aligned_identities(args, verifier):
    """Every photo of the labelled set aligned once (from `--cache` when it exists, else saved)."""
    from .data import load_samples
    from .evaluation import AlignedIdentities

    return _cached(args.cache, AlignedIdentities, lambda: AlignedIdentities.build(
        load_samples(args.identities, args.split), verifier.detector, args.face_policy,
        verifier.templates, progress=not args.quiet), verifier.detector_name)


def _cached(path, kind, build, detector: str):
    """The aligned set from `path` if it exists (made with `detector`'s landmarks), else built
    and saved there."""
    if path and Path(path).is_file():
        aligned = kind.load(path)
        aligned.check_detector(detector)
        return aligned
    aligned = build()
    if path:
        aligned.save(path)
    return aligned


def _write_report(args, verifier, report: dict) -> None:
    Path(args.json).write_text(json.dumps(
        {"pairs_file": str(args.pairs or args.identities), "split": args.split,
         "weights_sha256": verifier.metadata.weights_sha256, "detector": verifier.detector_name,
         "arch": verifier.metadata.arch,
         "providers": verifier.providers, "face_policy": args.face_policy, "flip": verifier.flip,
         **report}, indent=2))


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="store thresholds in a checkpoint's metadata: from a pairs "
                                         "file, or the all-pairs ROC of a labelled set (open-set FPIR)")
    p.add_argument("--pairs", type=Path)
    p.add_argument("--root", type=Path)
    p.add_argument("--identities", type=Path, help="a labelled set whose every pair is scored, e.g. "
                   "../shared/data/lfw/manifest.csv --split dev_eval (millions of impostor pairs)")
    p.add_argument("--split")
    p.add_argument("--cache", type=Path, help="aligned crops of the set: read if present, else saved")
    p.add_argument("--face-policy", choices=POLICIES, default="central")
    p.add_argument("--quiet", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from .models import set_thresholds
    from .metadata import ALL_PAIRS_ROC, PAIRS_ROC, TEMPLATE_ROC
    from .operating import roc_entry

    if str(args.model).endswith(".onnx"):
        raise FaceVerifyError("calibrate a checkpoint (.pt), then export it: ONNX files are read-only")
    _check_evaluation_set(args)
    verifier = _verifier(args)
    thresholds = dict(verifier.metadata.thresholds)
    if verifier.flip != verifier.metadata.flip and thresholds:
        # thresholds of flip-averaged and plain embeddings do not mix: the others must be redone
        print(f"the model's thresholds were calibrated {'without' if verifier.flip else 'with'} "
              "flip-averaging: dropped; calibrate its other set again with the same --flip/--no-flip",
              file=sys.stderr)
        thresholds = {}
    if verifier.detector_name != verifier.metadata.detector_name:
        # landmarks of another detector move every score: the other set must be redone too
        print(f"the model was calibrated with {verifier.metadata.detector_name} landmarks, this run uses "
              f"{verifier.detector_name}: its thresholds are dropped and it will name {verifier.detector_name}; "
              "calibrate its other set with the same --detector, and refit its quality model "
              "(training/fit_quality.py)", file=sys.stderr)
        thresholds = {}
    if args.pairs:
        from .metrics import calibrated_thresholds

        aligned = _aligned_pairs(args, verifier)
        scores, valid = aligned.scores(verifier.embed_aligned, verifier.templates)
        thresholds.update(calibrated_thresholds(scores, aligned.same, aligned.folds, valid, Path(args.pairs).name))
    else:
        from .evaluation import all_pairs_scores, template_scores

        aligned = _aligned_identities(args, verifier)
        embeddings = aligned.embeddings(verifier.embed_aligned, verifier.templates)[aligned.ok]
        labels = aligned.labels[aligned.ok]
        source = Path(args.identities).name + (f" split {args.split}" if args.split else "")
        thresholds[ALL_PAIRS_ROC] = roc_entry(*all_pairs_scores(embeddings, labels),
                                              f"{source}: every pair of photos")
        thresholds[TEMPLATE_ROC] = roc_entry(*template_scores(embeddings, labels),
                                             f"{source}: 2-photo templates vs photos")
    from .detect.registry import describe

    set_thresholds(args.model, thresholds, verifier.flip, describe(verifier.detector_name))
    print(json.dumps({k: v for k, v in thresholds.items() if k not in (PAIRS_ROC, ALL_PAIRS_ROC, TEMPLATE_ROC)}, indent=2))
    return EXIT_OK


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (and the MTCNN stages), or the "
                                      "end-to-end graph (photo in, embedding out)")
    p.add_argument("checkpoint", type=Path, nargs="?")
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16: half-precision weights and activations, for GPUs (float32 embeddings out); "
                   "with --end-to-end, weights stored in half precision, computed in float32 (smaller)")
    p.add_argument("--mtcnn", type=Path, metavar="DIR", help="also export P/R/O-net into DIR")
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--end-to-end", type=Path, metavar="OUT", help="one ONNX graph from a uint8 RGB photo to its "
                       "face's embedding (detection, alignment, members, fusion), of --model")
    graph.add_argument("--web", type=Path, metavar="DIR", help="a static page verifying two photos in the browser "
                       "(the end-to-end graph of --model, fp16 weights, run by onnxruntime-web; nothing is uploaded)")
    p.add_argument("--model", type=Path, help="--end-to-end, --web: the ONNX model (default: the bundled one)")
    p.add_argument("--ort-web", type=Path, metavar="PATH", help="--web: onnxruntime-web's package folder "
                   "(default: $FACEVERIFY_ORT_WEB, else the checkout's web/node_modules/onnxruntime-web)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    if args.end_to_end or args.web:
        return _export_graph(args)
    if not (args.checkpoint and args.out):
        raise FaceVerifyError("export needs CHECKPOINT OUT (or --end-to-end OUT, or --web DIR)")
    from .export import export_embedder, export_mtcnn

    metadata = export_embedder(args.checkpoint, args.out, args.input_dtype, args.precision)
    print(f"{args.out}: {metadata.arch}, dim {metadata.embedding_dim}, opset "
          f"{metadata.onnx['opset']}, {args.precision}, weights {metadata.short_hash}", file=sys.stderr)
    if args.mtcnn:
        for path in export_mtcnn(args.mtcnn):
            print(path, file=sys.stderr)
    return EXIT_OK


def _export_graph(args) -> int:
    """`export --end-to-end` or `--web`: they need onnx (the `export` extra), not torch."""
    if args.checkpoint or args.mtcnn:
        raise FaceVerifyError("--end-to-end and --web take the ONNX model as --model, not a checkpoint")
    try:
        from .e2e.model import export_end_to_end
        from .e2e.web import export_web
    except ImportError as exc:
        raise FaceVerifyError(f"exporting a graph needs onnx: pip install 'faceverify[export]' "
                              f"({exc.name or exc} is missing)") from None
    if args.end_to_end:
        metadata = export_end_to_end(args.end_to_end, args.model, args.precision)
        print(f"{args.end_to_end}: photo → {metadata['embedding_dim']}-d embedding, faces by "
              f"{metadata['detector']['name']}, weights {metadata['weights_sha256'][:12]} ({args.precision})",
              file=sys.stderr)
        return EXIT_OK
    page = export_web(args.web, args.model, args.ort_web)
    print(f"{args.web}: the page, {page['model']} and onnxruntime-web {page['onnxruntime_web']}; serve it, e.g. "
          f"`python -m http.server -b 127.0.0.1 -d {args.web}`, and open http://127.0.0.1:8000", file=sys.stderr)
    return EXIT_OK


def _gallery_args(p) -> None:
    # a str, not a Path: Path would fold postgresql:// into postgresql:/
    p.add_argument("--gallery", required=True, help="SQLite gallery file, or a postgresql:// URL")
    p.add_argument("--index", default="auto", help="auto | numpy | faiss-flat | faiss-ivf | faiss-hnsw")
    p.add_argument("--busy-timeout", type=float, default=10.0,
                   help="seconds to wait for another writer before giving up")
    p.add_argument("--face-policy", choices=POLICIES, default="single")
    _model_args(p)


def _gallery(args, create: bool = False):
    from .gallery import Gallery

    return Gallery(args.gallery, _verifier(args, args.face_policy), index=args.index,
                   busy_timeout_s=args.busy_timeout, create=create,
                   threshold=getattr(args, "threshold", None), target_fpir=getattr(args, "target_fpir", None))


def add_enroll(sub) -> None:
    p = sub.add_parser("enroll", help="add people to a gallery (--name NAME IMAGES... or --dataset)")
    p.add_argument("images", nargs="*", type=Path)
    p.add_argument("--name")
    p.add_argument("--dataset", type=Path, help="identity folders or manifest.csv")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _gallery_args(p)
    _ray_arg(p)
    p.set_defaults(func=cmd_enroll)


def cmd_enroll(args) -> int:
    with _gallery(args, create=True) as gallery:
        if args.name:
            reports = [gallery.enroll(args.name, args.images)]
        elif args.dataset and args.ray is not None:
            cluster, spec = _cluster(args, gallery.verifier)
            reports = cluster.enroll_on_ray(gallery, args.dataset, spec, progress=not args.quiet)
        elif args.dataset:
            reports = gallery.enroll_dataset(args.dataset, progress=not args.quiet)
        else:
            raise FaceVerifyError("give --name NAME IMAGES..., or --dataset DIR_OR_MANIFEST")
    added = sum(len(r.added) for r in reports)
    rejected = [(r.name, s, why) for r in reports for s, why in r.rejected]
    for name, source, why in rejected:
        print(f"rejected {source} ({name}): {why}", file=sys.stderr)
    print(f"enrolled {added} images of {sum(bool(r.added) for r in reports)} identities, "
          f"rejected {len(rejected)}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    return EXIT_OK if added else EXIT_INPUT


def add_identify(sub) -> None:
    p = sub.add_parser("identify", help="who is this? (open-set: 'unknown' below the threshold)")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--target-fpir", type=float, help="share of strangers that may be accepted as "
                   "someone (sets the threshold for this gallery's size; default: the gallery's, 0.01)")
    p.add_argument("--threshold", type=float, help="a fixed threshold instead")
    _gallery_args(p)
    p.set_defaults(func=cmd_identify)


def cmd_identify(args) -> int:
    with _gallery(args) as gallery:
        results = gallery.identify(args.images, args.top_k)
        point = gallery.operating_point()
    print(f"operating point: threshold {point.threshold:.4f} ({point.rule}); expected strangers "
          f"accepted (FPIR) {100 * point.fpir:.2f}%, enrolled people missed (FNIR) "
          f"{100 * point.fnir:.2f}%", file=sys.stderr)
    rows = []
    for path, result in zip(args.images, results):
        if isinstance(result, FaceVerifyError):
            rows.append({"image": str(path), "error": str(result)})
            print(f"{path}: error: {result}", file=sys.stderr)
        else:
            rows.append({"image": str(path), **result.to_dict()})
            if not args.json:
                print(f"{path}: {result.name or 'unknown'} (score {result.score:.4f}, "
                      f"threshold {result.threshold:.4f}){_unreliable(result)}")
    if args.json:
        print(json.dumps(rows, indent=2))
    return EXIT_OK if any("error" not in r for r in rows) else EXIT_INPUT


def _gallery_list(gallery, args) -> None:
    for name, images, created in gallery.identities():
        print(f"{name}\t{images} images\tenrolled {created}")


def _gallery_rename(gallery, args) -> None:
    gallery.rename(args.name, args.new_name)
    print(f"renamed {args.name!r} -> {args.new_name!r}", file=sys.stderr)


def _gallery_remove(gallery, args) -> None:
    gallery.remove(args.name)
    print(f"removed {args.name!r}", file=sys.stderr)


def _gallery_remove_image(gallery, args) -> None:
    gallery.remove_image(args.image_id)
    print(f"removed image {args.image_id}", file=sys.stderr)


#: gallery action → (what it does, the options it needs)
GALLERY_ACTIONS = {
    "list": (_gallery_list, ()),
    "show": (lambda gallery, args: print(json.dumps(gallery.show(args.name), indent=2)), ("name",)),
    "rename": (_gallery_rename, ("name", "new_name")),
    "remove": (_gallery_remove, ("name",)),
    "remove-image": (_gallery_remove_image, ("image_id",)),
    "export": (lambda gallery, args: print(f"exported {gallery.export(args.file)} images -> {args.file}",
                                           file=sys.stderr), ("file",)),
    "import": (lambda gallery, args: print(f"imported {gallery.import_(args.file, args.reembed)} images",
                                           file=sys.stderr), ("file",)),
}


def _gallery_upgrade(args) -> int:
    """Re-embed the gallery for --model (it was built by another one, so no `Gallery` opens it)."""
    from .gallery import upgrade_gallery

    report = upgrade_gallery(args.gallery, _verifier(args, args.face_policy), drop_missing=args.drop_missing,
                             progress=not args.quiet, busy_timeout_s=args.busy_timeout)
    for person, source, reason in report.dropped if report.upgraded else report.problems:
        print(f"{'dropped' if report.upgraded else 'cannot re-embed'} {source} ({person}): {reason}",
              file=sys.stderr)
    for person in report.removed_people:
        print(f"removed {person!r}: none of their photos could be re-embedded", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    if not report.ok:
        raise FaceVerifyError(f"{report.summary()} (what was re-embedded is kept); restore those photos "
                              "and run again, or add --drop-missing to remove them")
    print(report.summary(), file=sys.stderr)
    return EXIT_OK


def _gallery_audit(args) -> int:
    """The audit trail, whatever model built the gallery: oldest first, or JSON lines."""
    from .gallery import open_store, parse_since

    store = open_store(args.gallery, None, busy_timeout_s=args.busy_timeout)
    try:
        entries = store.audit_entries(parse_since(args.since) if args.since else None, args.name, args.limit)
    finally:
        store.close()
    for entry in entries:
        if args.json:
            print(json.dumps(entry.to_dict()))
        else:
            subject = "" if entry.subject is None else f" {entry.subject!r}"
            renamed = f" -> {entry.renamed_to!r}" if entry.renamed_to else ""
            print(f"{entry.at}\t{entry.actor}\t{entry.action}{subject}{renamed}\t{entry.outcome}")
    return EXIT_OK


#: gallery actions that open the gallery themselves: `upgrade` must open one built by another
#: model, `audit` reads it whatever its model
GALLERY_COMMANDS = {"upgrade": _gallery_upgrade, "audit": _gallery_audit}


def add_gallery(sub) -> None:
    p = sub.add_parser("gallery", help="list, show, rename, remove, export, import, upgrade "
                                       "(re-embed for a new --model) or audit (who changed what)")
    p.add_argument("action", choices=(*GALLERY_ACTIONS, *GALLERY_COMMANDS))
    p.add_argument("--name")
    p.add_argument("--new-name")
    p.add_argument("--image-id", type=int)
    p.add_argument("--file", type=Path, help="export / import .npz")
    p.add_argument("--reembed", action="store_true", help="import from another model's export")
    p.add_argument("--drop-missing", action="store_true", help="upgrade: remove the photos that cannot "
                   "be re-embedded (missing, unreadable, changed, no face) instead of stopping")
    p.add_argument("--json", action="store_true", help="upgrade: the report on stdout; audit: one JSON line each")
    p.add_argument("--quiet", action="store_true", help="upgrade: no progress bar")
    p.add_argument("--since", help="audit: from this ISO date/time (UTC) or age (30m, 12h, 7d)")
    p.add_argument("--person", dest="name", help="audit: only lines about this person (--name too)")
    p.add_argument("--limit", type=int, help="audit: only the newest N lines")
    _gallery_args(p)
    p.set_defaults(func=cmd_gallery)


def cmd_gallery(args) -> int:
    if args.action in GALLERY_COMMANDS:
        return GALLERY_COMMANDS[args.action](args)
    action, needed = GALLERY_ACTIONS[args.action]
    missing = [f"--{option.replace('_', '-')}" for option in needed if getattr(args, option) is None]
    if missing:
        raise FaceVerifyError(f"gallery {args.action} needs {' and '.join(missing)}")
    with _gallery(args, create=args.action == "import") as gallery:  # import may start a gallery
        action(gallery, args)
    return EXIT_OK


def _key_ring(args, create: bool):
    """The gallery's keys; a gallery that does not exist yet is created for the --model's
    embeddings when `create` (a first key comes before the first enrolment)."""
    from .access.keys import KeyRing
    from .gallery import Gallery, open_store

    try:
        store = open_store(args.gallery, None, busy_timeout_s=args.busy_timeout)
    except FaceVerifyError:
        if not create:
            raise
        store = Gallery(args.gallery, _verifier(args), busy_timeout_s=args.busy_timeout).store
    return KeyRing(store)


def add_keys(sub) -> None:
    from .access.keys import SCOPES

    p = sub.add_parser("keys", help="API keys of a gallery: add (the secret is printed once), list, revoke")
    p.add_argument("action", choices=("add", "list", "revoke"))
    p.add_argument("name", nargs="?", help="the key's name (add, revoke)")
    p.add_argument("--scope", action="append", choices=SCOPES, default=[],
                   help="add: what the key may do (repeat): verify, identify, enrol, admin (all)")
    p.add_argument("--json", action="store_true")
    _gallery_args(p)
    p.set_defaults(func=cmd_keys)


def cmd_keys(args) -> int:
    if args.action != "list" and not args.name:
        raise FaceVerifyError(f"keys {args.action} needs the key's NAME")
    ring = _key_ring(args, create=args.action == "add")
    try:
        if args.action == "add":
            key, token = ring.add(args.name, args.scope)
            print(f"key {key.name!r} ({', '.join(sorted(key.scopes))}) added; its secret is shown this "
                  "once, keep it safe:", file=sys.stderr)
            print(json.dumps({"name": key.name, "scopes": sorted(key.scopes), "key": token}) if args.json else token)
        elif args.action == "revoke":
            ring.revoke(args.name)
            print(f"key {args.name!r} revoked", file=sys.stderr)
        else:
            keys = ring.list()
            for key in keys:
                if not args.json:
                    state = f"revoked {key['revoked']}" if key["revoked"] else "in force"
                    print(f"{key['name']}\t{key['scopes']}\tcreated {key['created']}\t{state}")
            if args.json:
                print(json.dumps(keys, indent=2))
    finally:
        ring.store.close()
    return EXIT_OK


def add_users(sub) -> None:
    p = sub.add_parser("users", help="logins of the web UI (an auth file for `serve --auth-file`)")
    p.add_argument("action", choices=("add", "remove", "list"))
    p.add_argument("name", nargs="?")
    p.add_argument("--auth-file", type=Path, required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="add: read the password from standard input (else it is asked for twice)")
    p.set_defaults(func=cmd_users)


def cmd_users(args) -> int:
    import getpass

    from .access.users import UserFile

    users = UserFile(args.auth_file)
    if args.action == "list":
        print("\n".join(sorted(users.users)))
        return EXIT_OK
    if not args.name:
        raise FaceVerifyError(f"users {args.action} needs the user's NAME")
    if args.action == "remove":
        users.remove(args.name)
        print(f"removed {args.name!r} from {args.auth_file}", file=sys.stderr)
        return EXIT_OK
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise FaceVerifyError("the two passwords differ")
    users.add(args.name, password)
    print(f"{args.name!r} can log in ({args.auth_file})", file=sys.stderr)
    return EXIT_OK


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="align an identity dataset into crops of one template (resumable)")
    p.add_argument("source", type=Path, help="a folder of images (one subfolder per identity), or a manifest.csv")
    p.add_argument("dest", type=Path)
    p.add_argument("--split", help="only rows of this manifest split (e.g. train)")
    p.add_argument("--face-policy", choices=POLICIES, default="central")
    p.add_argument("--min-face-fraction", type=float, default=0.2,
                   help="smallest face searched, as a fraction of the short side (speed)")
    p.add_argument("--template", default="arcface-112",
                   help="the alignment the model to be trained takes (arcface-112, dlib-150)")
    _detector_arg(p, "the bundled model's")
    p.add_argument("--device")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from .align import TEMPLATES
    from .detect.registry import create_detector
    from .prepare import prepare_dataset
    from .verifier import default_model_path, load_embedder

    if args.template not in TEMPLATES:
        raise FaceVerifyError(f"unknown template {args.template!r}; choose one of {sorted(TEMPLATES)}")
    name = args.detector or load_embedder(default_model_path()).metadata.detector_name
    detector = create_detector(name, torch_free=False, device=args.device, min_face_fraction=args.min_face_fraction)
    report = prepare_dataset(args.source, args.dest, detector, split=args.split,
                             policy=args.face_policy, template=TEMPLATES[args.template])
    print(f"aligned {report.aligned}, failed {report.failed} (see {Path(args.dest) / 'failures.csv'}), "
          f"already done {report.skipped}; success {100 * report.success_rate:.2f}%", file=sys.stderr)
    return EXIT_OK


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="adapt a model to your own people: identity folders in, "
                                        "fine-tuned, calibrated and exported model out (resumable)")
    p.add_argument("dataset", type=Path, help="one sub-folder of photos per person (or a manifest.csv)")
    p.add_argument("--out", required=True, type=Path, help="the fine-tuned checkpoint (.pt; .onnx beside it)")
    p.add_argument("--base", type=Path, help="checkpoint to start from (default: the bundled model's .pt)")
    p.add_argument("--work", type=Path, help="stages, checkpoints and the report (default: OUT-finetune/)")
    p.add_argument("--steps", type=int, help="training steps (default: two passes over the training "
                                             "photos, 300 to 5,000)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.3, help="share of identities held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from .bundled import weights_dir
    from .train.finetune import FinetuneConfig, finetune

    base = args.base or weights_dir() / "faceverify-default.pt"
    if base.suffix != ".pt":
        raise FaceVerifyError(f"{base}: fine-tuning starts from a checkpoint (.pt), not {base.suffix or 'that'}")
    if not args.dataset.exists():
        raise FaceVerifyError(f"{args.dataset}: no such folder")
    cfg = FinetuneConfig(steps=args.steps, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed)
    report = finetune(args.dataset, args.out, base, args.work, cfg, progress=not args.quiet)
    for name in ("base", "finetuned"):
        r = report[name]
        tars = ", ".join(f"TAR@FAR={k}: " + ("n/a" if v is None else f"{v:.4f}") for k, v in r["tar_at_far"].items())
        print(f"{name}: AUC {r['auc']:.4f}, EER {100 * r['eer']:.2f}%, {tars} "
              f"({report['val_identities']} held-out identities)", file=sys.stderr)
    print(f"{args.out} and {args.out.with_suffix('.onnx')} written", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    return EXIT_OK


#: each verb's `add_*` registers its arguments and handler; plugins add more (the UI adds `serve`,
#: the REST API `api`)
VERBS = (add_verify, add_embed, add_evaluate, add_prepare, add_calibrate, add_export, add_enroll,
         add_identify, add_gallery, add_keys, add_users, add_finetune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceverify", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what runs where")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in VERBS:
        add(sub)
    for plugin in entry_points(group="faceverify.commands"):  # `serve` from app/, `api` from api/
        plugin.load()(sub, _model_args)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except FaceVerifyError as exc:
        print(f"faceverify: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("faceverify: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`faceverify gallery audit | head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

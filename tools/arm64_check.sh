#!/usr/bin/env bash
# Prove that the rover side (edge-seg run) and benchmarks/run.py run on aarch64, on this x86
# machine, by user-mode emulation. No chroot, no binfmt, no root-owned state is touched:
#   - qemu-aarch64-static from Debian's qemu-user-static package (the system one if installed);
#   - Debian's arm64 python3.11 and its libraries, fetched with `apt-get download` through a
#     private apt state folder and unpacked with `dpkg -x` into a sysroot;
#   - arm64 wheels of numpy, pillow, click and ai-edge-litert from `pip download --platform`,
#     unzipped into a site folder.
# Then it runs `edge-seg run` on the frames for every model, natively and emulated, compares the
# class maps, and runs benchmarks/run.py emulated. Emulated timings are not ARM timings.
#
# usage: tools/arm64_check.sh --frames DIR [--litert VERSION] [--cache DIR] [--out DIR] MODEL.tflite...
#
# ai-edge-litert under qemu 7.2 (Debian bookworm), seen on 2026-11-24:
#   2.3.0, 2.2.0  segfault (in allocate_tensors / the first invoke)
#   2.1.6         runs, but its int8 class maps differ from x86 on ~75 % of the pixels
#   2.0.3, 1.4.0  run; float32 maps equal x86's, int8 maps differ on <= 0.25 % of the pixels
# so 2.0.3 is the default: the newest that runs correctly under emulation. On a real board, use
# the newest wheel that passes this same comparison.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LITERT=2.0.3
CACHE="$ROOT/.cache/arm64"
OUT=""
FRAMES=""
MODELS=()
HOST_PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$HOST_PY" ]] || HOST_PY="$(command -v python3)"
# int8 kernels differ between ARM and x86 (XNNPACK's per-architecture requantization): a few
# near-tie pixels may flip. float32 maps must be identical.
INT8_MIN_AGREEMENT="${INT8_MIN_AGREEMENT:-0.995}"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
step() { printf '\n== %s\n' "$*"; }
die() { echo "arm64_check: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --frames) FRAMES="$2"; shift 2 ;;
    --litert) LITERT="$2"; shift 2 ;;
    --cache) CACHE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
[[ -n "$FRAMES" && -d "$FRAMES" ]] || { echo "--frames DIR (a folder of frames) is required" >&2; usage; }
[[ ${#MODELS[@]} -gt 0 ]] || { echo "give at least one MODEL.tflite" >&2; usage; }
for m in "${MODELS[@]}"; do [[ -f "$m" ]] || die "no model at $m"; done
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs Debian's apt-get and dpkg"
OUT="${OUT:-$CACHE/run}"
mkdir -p "$CACHE" "$OUT"
CACHE="$(cd "$CACHE" && pwd)"; OUT="$(cd "$OUT" && pwd)"; FRAMES="$(cd "$FRAMES" && pwd)"

step "qemu-user-static"
QEMU="$(command -v qemu-aarch64-static || true)"
if [[ -z "$QEMU" ]]; then
  if [[ ! -x "$CACHE/qemu/usr/bin/qemu-aarch64-static" ]]; then
    (cd "$CACHE" && apt-get download -q qemu-user-static 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    dpkg -x "$CACHE"/qemu-user-static_*_amd64.deb "$CACHE/qemu"
  fi
  QEMU="$CACHE/qemu/usr/bin/qemu-aarch64-static"
fi
"$QEMU" --version | head -1

step "arm64 Python 3.11 from Debian (apt-get download + dpkg -x)"
SYSROOT="$CACHE/sysroot"
if [[ ! -x "$SYSROOT/usr/bin/python3.11" ]]; then
  APT="$CACHE/apt"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/debs"
  : > "$APT/status"
  # A private apt state: the machine's own dpkg architecture list and package lists stay as they are.
  APTOPT=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$APT/lists"
          -o "Dir::Cache=$APT/cache" -o "Dir::State::status=$APT/status" -o Debug::NoLocking=1)
  apt-get "${APTOPT[@]}" -q update >/dev/null
  mapfile -t PKGS < <(apt-cache "${APTOPT[@]}" depends --recurse --no-recommends --no-suggests \
      --no-conflicts --no-breaks --no-replaces --no-enhances --no-pre-depends \
      python3.11-minimal libpython3.11-stdlib libstdc++6 | grep '^[a-z]' | sort -u \
      | grep -Ev '^(perl|perl-base|perl-modules-.*|libperl.*|dpkg|tar|install-info)$')
  (cd "$CACHE/debs" && apt-get "${APTOPT[@]}" -q download "${PKGS[@]}" 2>&1 \
      | grep -v '^W: Download is performed unsandboxed' || true)
  for deb in "$CACHE"/debs/*_arm64.deb "$CACHE"/debs/*_all.deb; do
    [[ -e "$deb" ]] && dpkg -x "$deb" "$SYSROOT"
  done
fi
ARM_PY=("$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11")
"${ARM_PY[@]}" -c 'import platform, sys; print("Python", sys.version.split()[0], platform.machine())'

step "arm64 wheels: numpy, pillow, click, ai-edge-litert $LITERT"
SITE="$CACHE/site-litert-$LITERT"
if [[ ! -f "$SITE/.complete" ]]; then
  rm -rf "$SITE" "$CACHE/wheels-$LITERT"
  "$HOST_PY" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
      -d "$CACHE/wheels-$LITERT" numpy pillow click "ai-edge-litert==$LITERT" 2>&1 \
      | grep -v '^WARNING: Location' || true
  ls "$CACHE/wheels-$LITERT"/ai_edge_litert-*.whl >/dev/null || die "no aarch64 wheel of ai-edge-litert $LITERT"
  for whl in "$CACHE/wheels-$LITERT"/*.whl; do "$HOST_PY" -m zipfile -e "$whl" "$SITE"; done
  touch "$SITE/.complete"
fi
ls "$CACHE/wheels-$LITERT" | sed 's/^/  /'
export PYTHONPATH="$SITE:$ROOT"

step "edge-seg run: x86_64 (native) vs aarch64 (emulated)"
STATUS=0
for model in "${MODELS[@]}"; do
  name="$(basename "$model" .tflite)"
  rm -rf "$OUT/x86_64/$name" "$OUT/aarch64/$name"
  PYTHONPATH="$ROOT" "$HOST_PY" -m edge.cli run --camera-dir "$FRAMES" --model "$model" \
      --out "$OUT/x86_64/$name" --threads 1 > "$OUT/x86_64-$name.log" 2>&1 \
      || { cat "$OUT/x86_64-$name.log"; die "native run of $name failed"; }
  "${ARM_PY[@]}" -c 'import sys; import edge.cli; sys.argv[0] = "edge-seg"; edge.cli.main()' run \
      --camera-dir "$FRAMES" --model "$model" --out "$OUT/aarch64/$name" --threads 1 \
      > "$OUT/aarch64-$name.log" 2>&1 || { cat "$OUT/aarch64-$name.log"; die "emulated run of $name failed"; }
  sed -n '1,2p' "$OUT/aarch64-$name.log" | sed 's/^/  aarch64: /'
  PYTHONPATH="$ROOT" "$HOST_PY" - "$OUT" "$name" "$model" "$INT8_MIN_AGREEMENT" <<'EOF' || STATUS=1
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edge.segmenter import Segmenter

out, name, model, threshold = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
native = sorted((out / "x86_64" / name / "masks").glob("*.png"))
if not native:
    sys.exit(f"  {name}: no masks were written")
same = total = 0
for path in native:
    other = out / "aarch64" / name / "masks" / path.name
    if not other.exists():
        sys.exit(f"  {name}: {path.name} missing from the aarch64 run")
    a, b = np.asarray(Image.open(path)), np.asarray(Image.open(other))
    same, total = same + int((a == b).sum()), total + a.size
agreement = same / total
quantized = Segmenter(model).quantized
needed = threshold if quantized else 1.0
verdict = "ok" if agreement >= needed else "FAILED"
print(f"  {name}: {len(native)} frames, class maps agree on {100 * agreement:.3f} % of pixels "
      f"({total - same} differ; needed {100 * needed:g} % for {'int8' if quantized else 'float'}) {verdict}")
sys.exit(0 if verdict == "ok" else 1)
EOF
done

step "benchmarks/run.py, emulated (timings measure qemu, not an ARM board)"
"${ARM_PY[@]}" "$ROOT/benchmarks/run.py" --models "${MODELS[@]}" --frames 6 --threads 1 --runs 3 \
    --warmup 1 --in-process --emulated --out "$OUT/bench" > "$OUT/bench.log" 2>&1 \
    || { tail -20 "$OUT/bench.log"; die "benchmarks/run.py failed under emulation"; }
grep -E '^(Machine|> \*\*EMULATED|\| invoke avg|\| mIoU|.* pixel agreement)' "$OUT/bench/report.md" \
    | sed 's/^/  /'


step "result"
if [[ $STATUS -eq 0 ]]; then
  echo "arm64 check passed: edge-seg run and benchmarks/run.py on aarch64 (qemu-user), ai-edge-litert $LITERT; outputs in $OUT"
else
  echo "arm64 check FAILED: class maps differ beyond the tolerance (see above)"
fi
exit $STATUS

#!/usr/bin/env bash
# Fetch every source the dataset builder needs into one cache folder (nothing is installed
# system-wide): the Debian packages (apt-get download + dpkg -x, via `audiotool data fetch`),
# their .deb files checked against the SHA-256 sums in benchmarks/data/SOURCES.md, and the
# tinysoundfont wheel that renders the MIDI stems.
#
#   benchmarks/data/fetch_sources.sh [CACHE]        # default $AUDIOTOOL_DATA_SOURCES or
#                                                   # /work/data_sources
# Layout written:
#   CACHE/debs/*.deb            the downloaded packages (kept, checksummed)
#   CACHE/x/<package>/usr/...   the unpacked trees (what `audiotool data build --sources` reads)
#   CACHE/wheels/*.whl          tinysoundfont (pip install --no-index -f CACHE/wheels tinysoundfont)
# Re-running is cheap: packages already unpacked are kept.
set -euo pipefail

CACHE="${1:-${AUDIOTOOL_DATA_SOURCES:-/work/data_sources}}"
PACKAGES=(tuxpaint-stamps-default wesnoth-1.16-music hydrogen-drumkits fluid-soundfont-gm
  timgm6mb-soundfont csound-soundfont opl3-soundfont avldrums.lv2-soundfont)
# Debian bookworm versions and .deb SHA-256 sums these datasets were built from
declare -A SHA256=(
  [tuxpaint-stamps-default_2022.06.04-1_all.deb]=6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34
  [wesnoth-1.16-music_1%3a1.16.9-1_all.deb]=f9bc3cde92b4ab30db5d7b85f89b4bcc3d788dd92602956d0347250850bf59bb
  [hydrogen-drumkits_2017.09.19~dfsg-1_all.deb]=6ea3c6df9a67762e2362f946c695e619859126b19fbccf32a2e8f07dfd03b2f4
  [fluid-soundfont-gm_3.1-5.3_all.deb]=6f531493ac4e4d9772fd96b2488ea1790af81c196135fbdd25997da0781fc60e
  [timgm6mb-soundfont_1.3-5_all.deb]=034abdfb296d9353433513dad5dbdcab46425ee6008fc02fe7039b46e75edc54
  [csound-soundfont_1%3a6.18.1+dfsg-1_all.deb]=0d05bec0cff2486f4537dd0236fece99f3565b62959717f82e975be8e0cf1393
  [opl3-soundfont_1.0-4_all.deb]=d0534cc07a536e1cfa05b1d0c0befb8586840c8d0e163ef24c536ca1bb5c9aff
  [avldrums.lv2-soundfont_0.5.2-2_all.deb]=436813f10c950324f28cb6a71e922f153084b6ed00049cd47da3f0f055f3ffc5
)
TINYSOUNDFONT="tinysoundfont==0.3.7"

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "error: needs $tool (a Debian/Ubuntu machine)" >&2; exit 2; }
done
mkdir -p "$CACHE/debs" "$CACHE/x" "$CACHE/wheels"

for pkg in "${PACKAGES[@]}"; do
  if [[ -d "$CACHE/x/$pkg" ]]; then
    echo "have   $pkg"
    continue
  fi
  if ! compgen -G "$CACHE/debs/${pkg}_*.deb" >/dev/null; then
    echo "fetch  $pkg"
    (cd "$CACHE/debs" && apt-get download "$pkg") || {
      echo "error: apt-get download $pkg failed (run apt-get update?)" >&2; exit 1; }
  fi
  deb=$(compgen -G "$CACHE/debs/${pkg}_*.deb" | head -n 1)
  name=$(basename "$deb")
  if [[ -n "${SHA256[$name]:-}" ]]; then
    echo "${SHA256[$name]}  $deb" | sha256sum --check --quiet
  else
    echo "warning: $name is not the version in SOURCES.md; measure it before use" >&2
  fi
  echo "unpack $name"
  tmp=$(mktemp -d "$CACHE/x/.unpack.XXXXXX")
  dpkg -x "$deb" "$tmp"
  mv "$tmp" "$CACHE/x/$pkg"
done

if ! compgen -G "$CACHE/wheels/tinysoundfont-*.whl" >/dev/null; then
  python -m pip download --only-binary=:all: --no-deps -d "$CACHE/wheels" "$TINYSOUNDFONT"
fi
echo "sources ready: $CACHE/x   (audiotool data build KIND OUT --sources $CACHE/x --seed 0)"

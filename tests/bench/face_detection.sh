#!/usr/bin/env bash
# Face detection on real photographs, for each of opencv-data's frontal face cascades
# (tests/bench/face_detection_bench.cc): faces found, missed, false boxes and ms per image; the
# first is mal's default.
# On demand, not in CI: it fetches the photos once into OUT/cache, from Debian's opencv-doc
# package (apt-get download: messi5.jpg and about 25 photos without faces) and scikit-image's wheel
# from PyPI (pip download: the astronaut and the cameraman, and about 20 photos without faces).
# The face boxes below were drawn by hand around brows to chin; the cameraman's face is turned
# three-quarters away, which a frontal cascade is not expected to find.
# Usage: tests/bench/face_detection.sh [OUT_DIR]   (default runs/face-detection)
# Environment: MAL_BUILD_DIR (build), MIN_FACE (px; 0: the detector's default), SYNTHFACE (200:
# SynthFace faces added to the real photos).
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${MAL_BUILD_DIR:-build}"
out="$(realpath -m "${1:-runs/face-detection}")"
cache="$out/cache"
photos="$out/photos"
mkdir -p "$cache" "$photos"
bench="$build/tests/face_detection_bench"
[ -x "$bench" ] || { echo "no $bench: build it (cmake --build $build --target face_detection_bench)" >&2; exit 1; }

if [ ! -d "$cache/opencv-doc" ]; then
  (cd "$cache" && apt-get download opencv-doc)
  dpkg -x "$cache"/opencv-doc_*.deb "$cache/opencv-doc.partial"
  mv "$cache/opencv-doc.partial" "$cache/opencv-doc"
fi
if [ ! -d "$cache/skimage" ]; then
  pip download --quiet --no-deps --only-binary :all: scikit-image==0.26.0 -d "$cache"
  python3 -m zipfile -e "$cache"/scikit_image-0.26.0-*.whl "$cache/skimage.partial"
  mv "$cache/skimage.partial" "$cache/skimage"
fi
ocv="$cache/opencv-doc/usr/share/doc/opencv-doc/examples/data"
ski="$cache/skimage/skimage/data"

{
  echo "image,x,y,width,height"
  cp "$ski/astronaut.png" "$ski/camera.png" "$ocv/messi5.jpg" "$photos/"
  echo "astronaut.png,177,67,93,93"
  echo "camera.png,177,110,78,78"
  echo "messi5.jpg,225,92,42,42"
  for f in aero1.jpg apple.jpg baboon.jpg basketball1.png board.jpg building.jpg butterfly.jpg \
      fruits.jpg graf1.png HappyFish.jpg home.jpg left01.jpg leuvenA.jpg orange.jpg smarties.png \
      squirrel_cls.jpg starry_night.jpg stuff.jpg; do
    cp "$ocv/$f" "$photos/ocv-$f"; echo "ocv-$f,,,,"
  done
  for f in brick.png cell.png chelsea.png coffee.png coins.png color.png grass.png gravel.png \
      horse.png hubble_deep_field.jpg ihc.png logo.png moon.png motorcycle_left.png page.png \
      phantom.png retina.jpg rocket.jpg text.png; do
    cp "$ski/$f" "$photos/ski-$f"; echo "ski-$f,,,,"
  done
} > "$photos/truth.csv.tmp"
mv "$photos/truth.csv.tmp" "$photos/truth.csv"

cascades=/usr/share/opencv4/haarcascades
lbp=/usr/share/opencv4/lbpcascades
"$bench" --truth "$photos/truth.csv" --synthface "${SYNTHFACE:-200}" --min-face "${MIN_FACE:-0}" \
  "$cascades/haarcascade_frontalface_alt.xml" "$cascades/haarcascade_frontalface_alt2.xml" \
  "$cascades/haarcascade_frontalface_default.xml" "$lbp/lbpcascade_frontalface_improved.xml" \
  2> >(grep -v "libpng warning" >&2)

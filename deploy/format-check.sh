#!/usr/bin/env bash
# Checks that every tracked C++ file is formatted as .clang-format says, except the files still
# listed in .clang-format-legacy (a list that only shrinks: a new file is checked from the start).
# Prints the files that differ and how to fix them; exit status 1 when any does.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format-check: clang-format is not installed (deploy/setup.sh installs it)" >&2; exit 2; }
legacy=$(grep -v '^#' .clang-format-legacy || true)
bad=()
checked=0
while IFS= read -r f; do
  if grep -qxF "$f" <<<"$legacy"; then continue; fi
  checked=$((checked + 1))
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done < <(git ls-files '*.cc' '*.h')
stale=()
while IFS= read -r f; do
  [ -n "$f" ] && [ ! -f "$f" ] && stale+=("$f")
done <<<"$legacy"
if [ ${#stale[@]} -gt 0 ]; then
  echo "format-check: .clang-format-legacy lists files that no longer exist: ${stale[*]}" >&2
  exit 1
fi
if [ ${#bad[@]} -gt 0 ]; then
  echo "format-check: ${#bad[@]} of $checked checked file(s) are not clang-formatted:" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "fix: clang-format -i ${bad[*]}" >&2
  exit 1
fi
echo "format-check: $checked file(s) formatted; $(grep -vc '^#' .clang-format-legacy) legacy file(s) not checked yet"

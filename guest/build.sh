#!/usr/bin/env bash
# Build the nodesvc guest kernels: a minimal Linux 6.1 with the dormant in-guest
# test agent built in, and an uncompressed busybox initramfs.
#   build.sh [VARIANT...]   (no argument: default; "all": every variant)
#   default  config/*.config                  -> vmlinux (ELF) + bzImage (uncompressed payload)
#   acpi     config/*.config + variants/acpi.config: ACPI-only discovery, like
#            Firecracker's guest config (ACPI + PCI, no MP table, no cmdline virtio)
# Each variant is cached outside the checkout in
#   ${NODESVC_CACHE:-$HOME/.cache/nodesvc}/guest/<key>/
# (key = sha256 of the recipe inputs and the variant) and linked as
#   default: guest/out/{vmlinux,vmlinux-agent,bzImage,initramfs.cpio} (vmlinux-agent = vmlinux)
#   acpi:    guest/out/vmlinux-acpi
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${NODESVC_CACHE:-$HOME/.cache/nodesvc}/guest
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/$SRC_PKG.tar.xz
PKGS=("$SRC_PKG" flex bison bc libelf-dev libssl-dev busybox-static cpio gcc libc6-dev
      make xz-utils patch binutils)
# Pin what ends up in the kernel's version banner so rebuilds are comparable.
export ARCH=x86_64 KBUILD_BUILD_USER=nodesvc KBUILD_BUILD_HOST=nodesvc \
       KBUILD_BUILD_TIMESTAMP="1970-01-01" LC_ALL=C

log() { printf '[guest %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ensure_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return
  [[ $(id -u) == 0 ]] || die "missing Debian packages (install them or run as root): ${missing[*]}"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the package lists when the plain install fails (slow, needs network).
  apt-get install -y --no-install-recommends "${missing[@]}" ||
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
}

# Config fragments of a variant, applied in this order (later lines win).
fragments() {
  local f
  for f in "$HERE"/config/*.config; do echo "$f"; done
  [[ $1 == default ]] || echo "$HERE/variants/$1.config"
}

# Everything that determines a variant's outputs; README/out/ edits and the other
# variants' fragments do not trigger rebuilds.
cache_key() {
  local inputs=(build.sh config patches initramfs agent)
  (
    cd "$HERE"
    echo "variant $VARIANT"
    find "${inputs[@]}" -type f ! -name '*~' -print0 | sort -z | xargs -0 sha256sum
    [[ $VARIANT == default ]] || sha256sum "variants/$VARIANT.config"
    dpkg-query -W -f='${Package} ${Version}\n' "$SRC_PKG" busybox-static
    gcc --version | head -n1
  ) | sha256sum | cut -c1-16
}

complete() {
  [[ -f $DEST/vmlinux && -f $DEST/initramfs.cpio ]] &&
    { [[ $VARIANT != default ]] || [[ -f $DEST/bzImage ]]; }
}

link_outputs() {
  mkdir -p "$HERE/out"
  if [[ $VARIANT == default ]]; then
    ln -sfn "$DEST/vmlinux" "$HERE/out/vmlinux"
    # The test agent is built into that same kernel and sleeps unless
    # nodesvc_agent.checks= is on the command line: one image, two names.
    ln -sfn "$DEST/vmlinux" "$HERE/out/vmlinux-agent"
    ln -sfn "$DEST/bzImage" "$HERE/out/bzImage"
    ln -sfn "$DEST/initramfs.cpio" "$HERE/out/initramfs.cpio"
    log "guest/out/vmlinux (= vmlinux-agent), bzImage, initramfs.cpio -> $DEST"
  else
    ln -sfn "$DEST/vmlinux" "$HERE/out/vmlinux-$VARIANT"
    log "guest/out/vmlinux-$VARIANT -> $DEST"
  fi
}

# Run a long command in its own process group with its output in a log file,
# printing a one-line heartbeat every 15 s instead of the full make output.
BG_PID=
run_quiet() {
  local phase=$1 logf=$2 t0=$SECONDS next=$((SECONDS + 15)) line
  shift 2
  log "$phase ..."
  setsid "$@" >>"$logf" 2>&1 &
  BG_PID=$!
  while kill -0 "$BG_PID" 2>/dev/null; do
    sleep 1
    if ((SECONDS >= next)); then
      line=$(tail -n1 "$logf" | tr -s ' ' | cut -c1-70)
      log "  ... $((SECONDS - t0))s, $(wc -l <"$logf") log lines${line:+, at:$line}"
      next=$((SECONDS + 15))
    fi
  done
  if ! wait "$BG_PID"; then
    BG_PID=
    cp "$logf" "$CACHE_ROOT/last-failed-build.log"
    tail -n 40 "$logf" >&2
    die "$phase failed (full log: $CACHE_ROOT/last-failed-build.log)"
  fi
  BG_PID=
  log "$phase done in $((SECONDS - t0))s"
}

# Every line of the fragment(s) must hold in the final .config; Kconfig silently
# drops symbols whose dependencies are missing, so check instead of trusting it.
# A symbol a later fragment sets again is checked against its last setting.
verify_config() {
  local cfg=$1 l k bad=()
  local -A want=()
  while IFS= read -r l; do
    case $l in
      CONFIG_*=*) want[${l%%=*}]=$l ;;
      "# CONFIG_"*" is not set") k=${l#\# }; want[${k%% *}]=$l ;;
    esac
  done < <(cat $(fragments "$VARIANT"))
  for k in "${!want[@]}"; do
    l=${want[$k]}
    case $l in
      CONFIG_*=*)
        grep -qxF -- "$l" "$cfg" ||
          bad+=("$l  (got: $(grep -E "^$k=|^# $k is not set" "$cfg" || echo absent))") ;;
      *)
        ! grep -qE "^$k=[ym]" "$cfg" || bad+=("$l  (got: $(grep "^$k=" "$cfg"))") ;;
    esac
  done
  if ((${#bad[@]})); then
    log "ERROR: config symbols that did not stick in $cfg:"
    printf '    %s\n' "${bad[@]}" >&2
    exit 1
  fi
}

# One variant: reuse its cache entry or build it. Runs in a subshell so each
# build has its own traps, lock and work dir.
build_variant() (
  VARIANT=$1
  [[ $VARIANT == default || -f $HERE/variants/$VARIANT.config ]] ||
    die "unknown variant $VARIANT (have: default $(cd "$HERE/variants" && ls *.config | sed 's/\.config$//' | tr '\n' ' '))"
  KEY=$(cache_key)
  DEST=$CACHE_ROOT/$KEY
  mkdir -p "$CACHE_ROOT"
  complete && { link_outputs; return 0; }

  # One build at a time per cache; a concurrent run waits, then finds the result.
  exec 9>"$CACHE_ROOT/.lock"
  flock -n 9 || { log "another guest build is running; waiting for it"; flock 9; }
  complete && { link_outputs; return 0; }
  rm -rf "$CACHE_ROOT"/.build-*   # leftovers of killed builds (we hold the lock)

  # Build in a temp dir next to the cache entry and rename it into place at the
  # end, so an interrupted build never leaves a half-written entry.
  WORK=$(mktemp -d "$CACHE_ROOT/.build-$KEY.XXXXXX")
  cleanup() {
    if [[ -n $BG_PID ]]; then   # stop the whole make process group first
      kill -TERM -- "-$BG_PID" 2>/dev/null || true
      wait "$BG_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  T0=$SECONDS
  OUT=$WORK/out
  SRC=$WORK/linux
  BLOG=$OUT/build.log
  mkdir -p "$OUT" "$SRC"
  log "building guest $VARIANT $KEY in $WORK ($SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG"), $(nproc) cores)"

  run_quiet "extract $SRC_TARBALL" "$BLOG" tar -xJf "$SRC_TARBALL" -C "$SRC" --strip-components=1
  for p in "$HERE"/patches/*.patch; do
    log "patch $(basename "$p")"
    patch -p1 -d "$SRC" --forward --quiet <"$p"
  done

  # The in-guest test agent (agent/nodesvc_agent.c) is plain built-in kernel code:
  # no Kconfig symbol, just one more object in init/.
  log "agent: init/nodesvc_agent.c"
  cp "$HERE/agent/nodesvc_agent.c" "$SRC/init/nodesvc_agent.c"
  echo 'obj-y += nodesvc_agent.o' >>"$SRC/init/Makefile"

  # tinyconfig, then our fragment(s) on top; olddefconfig fills in dependencies.
  run_quiet "configure" "$BLOG" bash -c 'cd "$1" && shift && make tinyconfig &&
    scripts/kconfig/merge_config.sh -m .config "$@" && make olddefconfig' _ "$SRC" $(fragments "$VARIANT")
  verify_config "$SRC/.config"   # fail fast, before the 4-minute compile

  # The default variant also makes a bzImage of the same build (CONFIG_KERNEL_UNCOMPRESSED:
  # nothing to decompress in the emulated guest); it only adds the boot stub, ~10 s.
  TARGETS=(vmlinux)
  [[ $VARIANT == default ]] && TARGETS+=(bzImage)
  run_quiet "make -j$(nproc) ${TARGETS[*]} (~4 min on 2 cores)" "$BLOG" make -C "$SRC" -j"$(nproc)" "${TARGETS[@]}"
  verify_config "$SRC/.config"   # the .config the kernel was really built from
  [[ -f $SRC/init/nodesvc_agent.o ]] || die "the test agent was not built into vmlinux"
  cp "$SRC/vmlinux" "$OUT/vmlinux"
  [[ $VARIANT != default ]] || cp "$SRC/arch/x86/boot/bzImage" "$OUT/bzImage"
  cp "$SRC/.config" "$OUT/config"

  # initramfs: busybox-static + /init, packed by the kernel's own gen_init_cpio
  # (device nodes without needing root or fakeroot; fixed timestamps).
  log "initramfs"
  gcc -O2 -o "$WORK/gen_init_cpio" "$SRC/usr/gen_init_cpio.c"
  BUSYBOX=$(dpkg -L busybox-static | grep -m1 '/bin/busybox$')
  {
    for d in bin dev proc sys tmp; do echo "dir /$d 755 0 0"; done
    echo "nod /dev/console 600 0 0 c 5 1"
    echo "nod /dev/null 666 0 0 c 1 3"
    echo "file /bin/busybox $BUSYBOX 755 0 0"
    for a in sh mount umount echo cat ls sleep dmesg uname reboot poweroff; do
      echo "slink /bin/$a busybox 777 0 0"
    done
    echo "file /init $HERE/initramfs/init 755 0 0"
  } >"$OUT/initramfs.list"
  "$WORK/gen_init_cpio" -t 0 "$OUT/initramfs.list" >"$OUT/initramfs.cpio"

  rm -rf "$SRC"   # ~1.5 GB; the cache keeps only the outputs
  mv -T "$OUT" "$DEST"
  log "built $VARIANT in $((SECONDS - T0))s: vmlinux $(du -h --apparent-size "$DEST/vmlinux" | cut -f1), initramfs $(du -h --apparent-size "$DEST/initramfs.cpio" | cut -f1)"
  link_outputs
)

ensure_packages
VARIANTS=("$@")
((${#VARIANTS[@]})) || VARIANTS=(default)
if [[ ${VARIANTS[*]} == all ]]; then
  VARIANTS=(default)
  for f in "$HERE"/variants/*.config; do VARIANTS+=("$(basename "$f" .config)"); done
fi
for v in "${VARIANTS[@]}"; do build_variant "$v"; done

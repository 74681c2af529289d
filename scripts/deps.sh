# Sourced by scripts/test and scripts/bench: make sure the Debian packages the project needs are installed.
# Installs what is missing when run as root; otherwise says what to install and fails.

SHMBUS_PACKAGES=(
  g++ cmake ninja-build pkg-config
  libboost-dev          # Boost.Interprocess (peers in bench/, later the broker)
  libgtest-dev libgmock-dev
  libbenchmark-dev
  nlohmann-json3-dev    # control protocol frames
  libcli11-dev          # the shmbus command
  libtomlplusplus-dev   # broker config
  libspdlog-dev libfmt-dev
  libzmq3-dev           # bench: the zmq-ipc peer (optional at configure time)
  iceoryx libiceoryx-posh-dev libiceoryx-hoofs-dev  # bench: the iceoryx peer and iox-roudi (optional)
  gnuplot-nox           # bench: the plots
)

shmbus_missing_packages() {
  local missing=()
  for p in "${SHMBUS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  echo "${missing[@]}"
}

shmbus_install_deps() {
  local missing
  missing=$(shmbus_missing_packages)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "shmbus: missing Debian packages: $missing" >&2
    echo "shmbus: run as root, or: sudo apt-get install -y $missing" >&2
    return 1
  fi
  echo "shmbus: installing $missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends $missing >&2
}

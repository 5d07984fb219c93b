#!/usr/bin/env bash
# Install (or upgrade, or remove) edge-asd on a Debian gateway.
#
# Idempotent: a second run re-installs the package into the existing venv and refreshes the
# systemd unit, but never touches an existing config, state directory or user.
# See docs/deploy.md. Run `deploy/install.sh --help` for the options.
set -euo pipefail

readonly SERVICE=edge-asd
readonly SERVICE_USER=edge-asd
readonly SERVICE_GROUP=edge-asd
readonly AUDIO_GROUP=audio
readonly UNIT_NAME=edge-asd.service
readonly DEFAULT_PREFIX=/opt/edge-asd
readonly APT_PACKAGES=(python3-venv python3-pip libportaudio2 libsndfile1)
readonly MIN_PYTHON="3.11"
# The directory keeps systemd's default ConfigurationDirectoryMode (0755); the files in it
# may name or hold broker credentials, so they are readable by root and the service group only.
readonly CONFIG_DIR_MODE=0755
readonly CONFIG_FILE_MODE=0640
readonly STATE_DIR_MODE=0750
readonly UNIT_FILE_MODE=0644
readonly DOC_FILE_MODE=0644

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname -- "$script_dir")
readonly script_dir repo_dir

prefix=$DEFAULT_PREFIX
root=""
source_dir=$repo_dir
python_bin=python3
pip_args=""
use_apt=1
use_systemctl=1
system_site=0
start=0
uninstall=0
purge=0

usage() {
    cat <<EOF
Usage: $0 [options]

Install edge-asd into a virtual environment, its config, state directory and systemd unit.

  --prefix DIR            install directory (default: $DEFAULT_PREFIX; the venv is DIR/venv)
  --root DIR              install under DIR instead of / (staging, tests): every path is
                          below it, no user is created, no ownership is changed
  --source PATH           what to pip install (default: the repository holding this script)
  --python BIN            interpreter for the venv (default: python3; needs >= $MIN_PYTHON)
  --system-site-packages  let the venv see system packages (offline installs)
  --pip-args "ARGS"       extra arguments for pip install, e.g. "--no-index --find-links DIR"
  --no-apt                do not apt-get install ${APT_PACKAGES[*]}
  --no-systemctl          do not call systemctl (automatic when systemd is not running)
  --start                 (re)start the service after installing
  --uninstall             remove the venv and the unit; keep config and state
  --purge                 with --uninstall: also remove config and state
  -h, --help              this text
EOF
}

log() {
    printf '%s install: %s\n' "$SERVICE" "$*"
}

die() {
    printf '%s install: error: %s\n' "$SERVICE" "$*" >&2
    exit 1
}

# Print a command, then run it: the operator sees exactly what changed the system.
run() {
    log "+ $*"
    "$@"
}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --prefix) need_value "$@"; prefix=$2; shift 2 ;;
        --root) need_value "$@"; root=$2; shift 2 ;;
        --source) need_value "$@"; source_dir=$2; shift 2 ;;
        --python) need_value "$@"; python_bin=$2; shift 2 ;;
        # An empty --pip-args "" is allowed: callers may build it from an empty variable.
        --pip-args) [[ $# -ge 2 ]] || die "option --pip-args needs a value"; pip_args=$2; shift 2 ;;
        --system-site-packages) system_site=1; shift ;;
        --no-apt) use_apt=0; shift ;;
        --no-systemctl) use_systemctl=0; shift ;;
        --start) start=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

[[ $prefix == /* ]] || die "--prefix must be an absolute path, got '$prefix'"
prefix=${prefix%/}
[[ -n $prefix ]] || die "--prefix must not be /"
# It ends up unquoted in the unit's ExecStart= and in a sed expression.
[[ $prefix =~ ^[A-Za-z0-9._/-]+$ ]] || die "--prefix '$prefix' may only contain letters, digits, . _ - /"
if [[ -n $root ]]; then
    [[ -d $root ]] || die "--root directory '$root' does not exist"
    root=$(cd -- "$root" && pwd)
    if [[ $root == / ]]; then
        root=""
    fi
fi
if ((purge && !uninstall)); then
    die "--purge only makes sense with --uninstall"
fi

readonly venv_dir="$root$prefix/venv"
readonly docs_dir="$root$prefix/docs"
readonly config_dir="$root/etc/$SERVICE"
readonly config_file="$config_dir/config.yaml"
readonly state_dir="$root/var/lib/$SERVICE"
readonly unit_file="$root/etc/systemd/system/$UNIT_NAME"
readonly unit_source="$repo_dir/systemd/$UNIT_NAME"
readonly config_source="$repo_dir/deploy/config.example.yaml"
readonly docs_source="$repo_dir/docs/deploy.md"

is_root_user() {
    [[ $(id -u) -eq 0 ]]
}

# sd_booted(3): systemd is PID 1 exactly when this directory exists.
systemd_running() {
    [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

if ((use_systemctl)); then
    if [[ -n $root ]]; then
        log "--root given: not touching the running systemd of this machine"
        use_systemctl=0
    elif ! systemd_running; then
        log "systemd is not running (container?): skipping systemctl"
        use_systemctl=0
    fi
fi

if [[ -z $root ]] && ! is_root_user; then
    die "run as root (sudo $0 ...), or stage an install with --root DIR"
fi

install_apt_packages() {
    local missing=() package
    for package in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "apt packages already installed: ${APT_PACKAGES[*]}"
        return
    fi
    is_root_user || die "apt-get needs root; install ${missing[*]} yourself and pass --no-apt"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

create_user() {
    if [[ -n $root ]]; then
        log "--root given: not creating user $SERVICE_USER (create it on the target system)"
        return
    fi
    if ! getent group "$SERVICE_GROUP" >/dev/null; then
        run groupadd --system "$SERVICE_GROUP"
    fi
    if ! getent group "$AUDIO_GROUP" >/dev/null; then
        run groupadd --system "$AUDIO_GROUP"
    fi
    if getent passwd "$SERVICE_USER" >/dev/null; then
        log "user $SERVICE_USER exists"
        if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$AUDIO_GROUP"; then
            run usermod --append --groups "$AUDIO_GROUP" "$SERVICE_USER"
        fi
        return
    fi
    run useradd --system --gid "$SERVICE_GROUP" --groups "$AUDIO_GROUP" \
        --home-dir "/var/lib/$SERVICE" --no-create-home --shell /usr/sbin/nologin \
        --comment "edge-asd anomalous sound detection" "$SERVICE_USER"
}

# Copy a file we own (unit, docs) unless the installed copy is already identical.
install_if_changed() {
    local source=$1 target=$2 mode=$3
    if [[ -f $target ]] && cmp -s "$source" "$target"; then
        log "unchanged: $target"
        return
    fi
    run install -D -m "$mode" "$source" "$target"
}

# chown, unless this is a staged (--root) install where the user does not exist.
set_owner() {
    local owner=$1 path=$2
    if [[ -n $root ]]; then
        return
    fi
    run chown "$owner" "$path"
}

# The venv's python is a symlink to --python's interpreter: one under a private directory
# (pyenv in /root, a home directory) installs fine but the service user cannot execute it.
check_service_user_can_run() {
    if [[ -n $root ]] || ! getent passwd "$SERVICE_USER" >/dev/null || ! command -v runuser >/dev/null; then
        return
    fi
    if ! runuser -u "$SERVICE_USER" -- "$venv_dir/bin/$SERVICE" --version >/dev/null 2>&1; then
        die "user $SERVICE_USER cannot run $venv_dir/bin/$SERVICE; is the interpreter" \
            "$python_bin in a directory that user cannot read? Use a system python (--python /usr/bin/python3)"
    fi
    log "user $SERVICE_USER can run $venv_dir/bin/$SERVICE"
}

install_venv() {
    [[ -e $source_dir ]] || die "--source '$source_dir' does not exist"
    if [[ -x $venv_dir/bin/python ]]; then
        log "venv exists: $venv_dir"
    else
        "$python_bin" -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON/./, }))" ||
            die "$python_bin is older than Python $MIN_PYTHON"
        local venv_opts=()
        if ((system_site)); then
            venv_opts+=(--system-site-packages)
            # The system pip and setuptools are visible then; a venv-private copy from
            # ensurepip would shadow them with older versions that may not build offline.
            if "$python_bin" -m pip --version >/dev/null 2>&1; then
                venv_opts+=(--without-pip)
            fi
        fi
        run mkdir -p "$root$prefix"
        run "$python_bin" -m venv "${venv_opts[@]}" "$venv_dir"
    fi
    local extra=()
    # Word splitting is the point: --pip-args carries several pip options in one string.
    read -r -a extra <<<"$pip_args"
    # Only the package itself, never the `train` extra: the runtime does not need torch.
    run "$venv_dir/bin/python" -m pip install --disable-pip-version-check --no-input \
        "${extra[@]}" "$source_dir"
    local torch_dirs
    torch_dirs=$(find "$venv_dir/lib" -maxdepth 3 -type d -name torch -path '*site-packages*')
    [[ -z $torch_dirs ]] || die "torch was installed into $venv_dir; the runtime must not need it"
    [[ -x $venv_dir/bin/$SERVICE ]] || die "pip did not create $venv_dir/bin/$SERVICE"
    check_service_user_can_run
    if [[ -f $docs_source ]]; then
        install_if_changed "$docs_source" "$docs_dir/deploy.md" "$DOC_FILE_MODE"
    fi
}

install_config() {
    if [[ ! -d $config_dir ]]; then
        run install -d -m "$CONFIG_DIR_MODE" "$config_dir"
        set_owner "root:$SERVICE_GROUP" "$config_dir"
    fi
    if [[ -e $config_file ]]; then
        log "keeping existing $config_file"
        return
    fi
    [[ -f $config_source ]] || die "example config $config_source is missing"
    run install -m "$CONFIG_FILE_MODE" "$config_source" "$config_file"
    set_owner "root:$SERVICE_GROUP" "$config_file"
    log "edit $config_file (machines, MQTT broker), then: systemctl restart $SERVICE"
}

install_state() {
    if [[ -d $state_dir ]]; then
        log "state directory exists: $state_dir"
    else
        run install -d -m "$STATE_DIR_MODE" "$state_dir"
        set_owner "$SERVICE_USER:$SERVICE_GROUP" "$state_dir"
    fi
    if [[ ! -d $state_dir/bundles ]]; then
        run install -d -m "$STATE_DIR_MODE" "$state_dir/bundles"
        set_owner "$SERVICE_USER:$SERVICE_GROUP" "$state_dir/bundles"
    fi
}

install_unit() {
    [[ -f $unit_source ]] || die "unit file $unit_source is missing"
    local rendered
    rendered=$(mktemp)
    # The unit names the default prefix; point ExecStart and Documentation at the real one.
    sed -e "s#$DEFAULT_PREFIX/#$prefix/#g" "$unit_source" >"$rendered"
    install_if_changed "$rendered" "$unit_file" "$UNIT_FILE_MODE"
    rm -f "$rendered"
}

enable_service() {
    if ((!use_systemctl)); then
        log "skipping systemctl; on the target run: systemctl daemon-reload && systemctl enable $SERVICE"
        return
    fi
    run systemctl daemon-reload
    run systemctl enable "$UNIT_NAME"
    if ((start)); then
        run systemctl restart "$UNIT_NAME"
    else
        log "start it with: systemctl start $SERVICE (after editing $config_file)"
    fi
}

do_install() {
    log "installing into prefix $prefix${root:+ under root $root}"
    if ((use_apt)); then
        install_apt_packages
    else
        log "--no-apt: not installing ${APT_PACKAGES[*]}"
    fi
    create_user
    install_venv
    install_config
    install_state
    install_unit
    enable_service
    log "done"
}

do_uninstall() {
    log "removing $SERVICE from prefix $prefix${root:+ under root $root}"
    if ((use_systemctl)) && [[ -f $unit_file ]]; then
        run systemctl disable --now "$UNIT_NAME"
    fi
    if [[ -f $unit_file ]]; then
        run rm -f "$unit_file"
        if ((use_systemctl)); then
            run systemctl daemon-reload
        fi
    fi
    if [[ -d $venv_dir ]]; then
        run rm -rf "$venv_dir"
    fi
    if [[ -d $docs_dir ]]; then
        run rm -rf "$docs_dir"
    fi
    if [[ -d $root$prefix ]]; then
        # Only if empty: the operator may keep other things under the prefix.
        rmdir "$root$prefix" 2>/dev/null || log "keeping non-empty $root$prefix"
    fi
    if ((purge)); then
        if [[ -d $config_dir ]]; then
            run rm -rf "$config_dir"
        fi
        if [[ -d $state_dir ]]; then
            run rm -rf "$state_dir"
        fi
        if [[ -z $root ]] && getent passwd "$SERVICE_USER" >/dev/null; then
            log "keeping user $SERVICE_USER (files elsewhere may belong to it); userdel $SERVICE_USER removes it"
        fi
    else
        log "keeping $config_dir and $state_dir (--purge removes them)"
    fi
    log "done"
}

if ((uninstall)); then
    do_uninstall
else
    do_install
fi

#!/usr/bin/env bash
# Install the Debian tools genoflows runs, only those missing; a no-op in well under a second when all are there.
set -euo pipefail

# binary -> Debian package
declare -A PACKAGES=(
  [bcftools]=bcftools [tabix]=tabix [bgzip]=tabix [samtools]=samtools
  [kallisto]=kallisto [fasterq-dump]=sra-toolkit [minimac4]=minimac4 [shapeit4]=shapeit4 [plink2]=plink2
)
PACKAGES[podman]=podman             # deploy (issue 11): Docker Engine API for the Docker-pool test
PACKAGES[runc]=runc                 # deploy: the OCI runtime podman uses here (crun fails on these hosts)
PACKAGES[debootstrap]=debootstrap   # deploy: registry-free base image for the flow image
PACKAGES[chromium]=chromium         # deploy: the UI end-to-end test's browser
PACKAGES[chromedriver]=chromium-driver  # deploy: drives it (selenium)
PACKAGES[curl]=curl                 # deploy: the documented REST calls
PACKAGES[jq]=jq                     # deploy: formats their answers
missing=()
for bin in "${!PACKAGES[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${PACKAGES[$bin]}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" build-essential zlib1g-dev libbz2-dev liblzma-dev

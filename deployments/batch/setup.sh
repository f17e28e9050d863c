#!/usr/bin/env bash
# Create the AWS Batch compute environment, job queue and job definition genoflows submits tool jobs to.
# Needs: the aws CLI, envsubst, and AWS_ACCOUNT_ID, SUBNET_IDS (one subnet), SECURITY_GROUP_ID, GENOFLOWS_IMAGE
# (the flow image from deployments/Dockerfile, pushed to ECR) in the environment. Idempotent where AWS allows.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${AWS_ACCOUNT_ID:?}" "${SUBNET_IDS:?}" "${SECURITY_GROUP_ID:?}" "${GENOFLOWS_IMAGE:?}"
render() { envsubst < "$here/$1"; }
aws batch describe-compute-environments --compute-environments genoflows-spot --query 'computeEnvironments[0]' \
  --output text | grep -q genoflows-spot \
  || aws batch create-compute-environment --cli-input-json "$(render compute-environment.json)"
aws batch describe-job-queues --job-queues genoflows-tools --query 'jobQueues[0]' --output text | grep -q genoflows-tools \
  || aws batch create-job-queue --cli-input-json "$(render job-queue.json)"
aws batch register-job-definition --cli-input-json "$(render job-definition.json)"
echo "Batch ready: queue genoflows-tools, job definition genoflows-tool. Save an AwsBatch block (README: Past one machine)."

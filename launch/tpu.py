"""Train Crab on a Cloud TPU slice as a batch job that survives preemption.

    python -m launch.tpu run --name crab-ft --project P --zone us-central2-b \\
        --accelerator v4-32 --spot --workdir gs://BUCKET/runs/ft \\
        --config configs/tpu_v4.py:finetune -- --config.model.init_checkpoint=gs://BUCKET/crab7b

``run`` does, with ``gcloud``:

1. creates a queued resource (spot, on-demand or reserved) holding one TPU VM slice and
   waits until it is ACTIVE;
2. packs this checkout (``git ls-files``: committed and modified tracked files), copies it
   to every worker and ``pip install -e '.[tpu]'`` s it there;
3. runs the SAME train command on every worker (``--worker=all``; JAX finds its peers
   through ``jax.distributed.initialize``), checkpoints and metrics in ``--workdir`` on GCS;
4. if the command ends without success because the slice was preempted (queued resource
   no longer ACTIVE), deletes the queued resource, creates it again and goes back to 2:
   the same command resumes from the last committed checkpoint in ``--workdir``. A failure
   on a healthy slice (a bug, a NaN) stops the job instead of looping;
5. ``--delete-when-done`` deletes the queued resource after success.

``--dry-run`` prints the gcloud commands of one pass (creation to deletion) without
running anything. ``status`` and ``delete`` act on an existing job.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

from crab_jax.parallel.accelerators import tpu_generations

REPO = pathlib.Path(__file__).resolve().parents[1]
# Accelerator types gcloud takes, and the TPU VM software image of each generation
# (https://cloud.google.com/tpu/docs/runtimes), from the one accelerator table.
RUNTIME_VERSIONS = {gen: acc.runtime_version for gen, acc in tpu_generations().items() if gen != "v5e"}
ACCELERATOR_RE = re.compile(rf"^({'|'.join(RUNTIME_VERSIONS)})-(\d+)$")
PREEMPTED_STATES = ("SUSPENDING", "SUSPENDED", "FAILED", "DELETING")
WAITING_STATES = ("CREATING", "ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES")
REMOTE_DIR = "crab_jax"          # under the worker's home directory
REMOTE_TARBALL = "crab_jax.tar.gz"


class LaunchError(RuntimeError):
    """The job cannot go on (bad flags, gcloud failure, a failure that is not a preemption)."""


@dataclasses.dataclass(frozen=True)
class Job:
    name: str                  # queued resource id; the TPU VM node is "<name>-node"
    project: str
    zone: str
    accelerator: str           # gcloud accelerator type: v4-32, v5litepod-16, v6e-8, ...
    provisioning: str          # spot | on-demand | reserved
    runtime_version: str
    workdir: str               # gs://...
    config: str                # configs/...py[:VARIANT], relative to the repository
    train_args: tuple[str, ...]

    @property
    def node(self) -> str:
        return f"{self.name}-node"

    def where(self) -> list[str]:
        return [f"--zone={self.zone}", f"--project={self.project}"]


# -- the gcloud commands (pure: Job -> argv) -------------------------------------------------------


def create_cmd(job: Job) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", job.name, f"--node-id={job.node}",
           *job.where(), f"--accelerator-type={job.accelerator}", f"--runtime-version={job.runtime_version}"]
    if job.provisioning == "spot":
        cmd.append("--spot")
    elif job.provisioning == "reserved":
        cmd.append("--reserved")
    return cmd


def state_cmd(job: Job) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", job.name, *job.where(),
            "--format=value(state.state)"]


def delete_cmd(job: Job) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", job.name, *job.where(), "--force", "--quiet"]


def pack_cmd(tarball: str) -> str:
    """Local shell line: every tracked file of the checkout (with uncommitted edits) into a tarball."""
    return f"cd {shlex.quote(str(REPO))} && git ls-files -z | tar --null -czf {shlex.quote(tarball)} -T -"


def copy_cmd(job: Job, tarball: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{job.node}:{REMOTE_TARBALL}", "--worker=all",
            *job.where()]


def ssh_cmd(job: Job, remote: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", job.node, "--worker=all", *job.where(),
            f"--command={remote}"]


def install_remote() -> str:
    return (f"set -e; rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/{REMOTE_TARBALL} -C ~/{REMOTE_DIR}"
            f" && cd ~/{REMOTE_DIR} && python3 -m pip install -q --upgrade pip && python3 -m pip install -q -e '.[tpu]'")


def train_remote(job: Job) -> str:
    """The same command on every worker; rerunning it resumes from the workdir's checkpoints."""
    args = ["python3", "-m", "crab_jax.train", f"--config={job.config}", f"--workdir={job.workdir}",
            "--config.distributed.initialize=always", *job.train_args]
    return f"cd ~/{REMOTE_DIR} && " + shlex.join(args)


# -- flags ----------------------------------------------------------------------------------------


def parse_accelerator(value: str) -> str:
    m = ACCELERATOR_RE.match(value)
    if not m:
        hint = " (v5e is 'v5litepod-N' in gcloud)" if value.startswith("v5e") else ""
        raise LaunchError(f"--accelerator {value!r}: expected a Cloud TPU accelerator type such as v4-8, v4-32, "
                          f"v5p-8, v5litepod-16, v6e-8{hint}")
    return value


def job_from_args(args: argparse.Namespace) -> Job:
    if not args.workdir:
        raise LaunchError("--workdir is required: a gs:// folder every worker can read and write "
                          "(checkpoints, metrics)")
    if not args.workdir.startswith("gs://") or len(args.workdir) <= len("gs://"):
        raise LaunchError(f"--workdir {args.workdir!r}: must be a gs://BUCKET/path folder; every worker writes "
                          "its checkpoint shards there and a restarted slice reads them back")
    accelerator = parse_accelerator(args.accelerator)
    config_file = args.config.split(":", 1)[0]
    if not (REPO / config_file).is_file():
        raise LaunchError(f"--config {args.config!r}: no file {config_file} in {REPO} (give a path relative to "
                          "the repository, e.g. configs/tpu_v4.py:finetune)")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", args.name):
        raise LaunchError(f"--name {args.name!r}: lower-case letters, digits and '-', starting with a letter")
    for bad in ("--workdir", "--config="):
        if any(a.startswith(bad) for a in args.train_args):
            raise LaunchError(f"extra train flag {bad}...: set it with this script's own {bad.rstrip('=')} flag")
    generation = accelerator.split("-")[0]
    return Job(name=args.name, project=args.project, zone=args.zone, accelerator=accelerator,
               provisioning=args.provisioning, runtime_version=args.runtime_version or RUNTIME_VERSIONS[generation],
               workdir=args.workdir.rstrip("/"), config=args.config, train_args=tuple(args.train_args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)

    def common(sp):
        sp.add_argument("--name", required=True, help="queued resource id (the TPU VM is NAME-node)")
        sp.add_argument("--project", required=True, help="Google Cloud project")
        sp.add_argument("--zone", required=True, help="zone with TPU quota, e.g. us-central2-b (v4)")
        sp.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")

    run = sub.add_parser("run", help="create the slice, install, train, restart after preemption")
    common(run)
    run.add_argument("--accelerator", required=True, help="gcloud accelerator type: v4-8, v4-32, v5litepod-16, ...")
    kind = run.add_mutually_exclusive_group()
    kind.add_argument("--spot", dest="provisioning", action="store_const", const="spot",
                      help="spot capacity: cheap, preemptible (restarted and resumed by this script)")
    kind.add_argument("--reserved", dest="provisioning", action="store_const", const="reserved",
                      help="capacity from the project's reservation")
    kind.add_argument("--on-demand", dest="provisioning", action="store_const", const="on-demand",
                      help="on-demand capacity (the default)")
    run.set_defaults(provisioning="on-demand")
    run.add_argument("--runtime-version", default="", help="TPU VM image; default per generation "
                     f"({', '.join(f'{k}: {v}' for k, v in RUNTIME_VERSIONS.items())})")
    run.add_argument("--workdir", default="", help="gs:// run folder: checkpoints, metrics.jsonl, tensorboard/")
    run.add_argument("--config", default="configs/tpu_v4.py:finetune",
                     help="train config, relative to the repository (FILE[:VARIANT])")
    run.add_argument("--max-restarts", type=int, default=20, help="preemptions to recover from before giving up")
    run.add_argument("--poll-seconds", type=float, default=60.0, help="how often to poll the queued resource")
    run.add_argument("--delete-when-done", action="store_true", help="delete the queued resource after success")
    run.add_argument("train_args", nargs="*", metavar="-- TRAIN_FLAGS",
                     help="extra flags for crab_jax.train after '--', e.g. --config.train.num_steps=1000")
    common(sub.add_parser("status", help="print the queued resource's state"))
    common(sub.add_parser("delete", help="delete the queued resource (and its TPU VMs)"))
    return p


# -- the side-effect edge -------------------------------------------------------------------------


class Gcloud:
    """Runs commands, or (dry run) prints them and answers ``state`` queries with ACTIVE."""

    def __init__(self, dry_run: bool, out: Callable[[str], None] = print):
        self.dry_run = dry_run
        self.out = out

    def run(self, cmd: list[str] | str, *, check: bool = True) -> int:
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.out(line if self.dry_run else f"+ {line}")
        if self.dry_run:
            return 0
        rc = subprocess.run(cmd, shell=isinstance(cmd, str)).returncode
        if check and rc:
            raise LaunchError(f"command failed (exit {rc}): {line}")
        return rc

    def state(self, job: Job) -> str:
        """The queued resource's state, or NOT_FOUND."""
        cmd = state_cmd(job)
        if self.dry_run:
            self.out(shlex.join(cmd))
            return "ACTIVE"
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            if "NOT_FOUND" in proc.stderr or "not found" in proc.stderr.lower():
                return "NOT_FOUND"
            raise LaunchError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout.strip() or "UNKNOWN"

    def comment(self, text: str) -> None:
        self.out(f"# {text}")


def wait_active(g: Gcloud, job: Job, poll: float) -> None:
    while True:
        state = g.state(job)
        if state == "ACTIVE":
            return
        if state in PREEMPTED_STATES or state == "NOT_FOUND":
            raise LaunchError(f"queued resource {job.name}: state {state} while waiting for ACTIVE")
        g.comment(f"queued resource {job.name}: {state}; waiting")
        time.sleep(poll)


def ensure_active(g: Gcloud, job: Job, poll: float) -> None:
    """Creates the queued resource (again, if preempted) and waits until it is ACTIVE."""
    state = g.state(job) if not g.dry_run else "NOT_FOUND"
    if state in PREEMPTED_STATES:
        g.comment(f"queued resource {job.name} is {state}: deleting it to create it again")
        g.run(delete_cmd(job))
        state = "NOT_FOUND"
    if state == "NOT_FOUND":
        g.run(create_cmd(job))
    wait_active(g, job, poll)


def run_job(g: Gcloud, job: Job, *, max_restarts: int, poll: float, delete_when_done: bool) -> None:
    tarball = f"/tmp/{job.name}-{REMOTE_TARBALL}"
    g.run(pack_cmd(tarball))
    for attempt in range(max_restarts + 1):
        ensure_active(g, job, poll)
        g.run(copy_cmd(job, tarball))
        g.run(ssh_cmd(job, install_remote()))
        rc = g.run(ssh_cmd(job, train_remote(job)), check=False)
        if rc == 0:
            g.comment(f"training finished; results in {job.workdir}")
            break
        state = g.state(job)
        if state == "ACTIVE":
            raise LaunchError(f"the train command failed (exit {rc}) on a healthy slice (queued resource ACTIVE): "
                              f"not a preemption, not restarting; see the worker logs and {job.workdir}")
        g.comment(f"slice lost (queued resource {state}); restart {attempt + 1} of {max_restarts}")
    else:
        raise LaunchError(f"gave up after {max_restarts} restarts; the run resumes from {job.workdir} "
                          "when this command is run again")
    if g.dry_run:
        g.comment("after a preemption: the state query shows SUSPENDED/FAILED, then: delete, create, "
                  "copy, install, train (resumes from the last committed checkpoint)")
    if delete_when_done:
        g.run(delete_cmd(job))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        g = Gcloud(args.dry_run)
        if args.action == "run":
            job = job_from_args(args)
            run_job(g, job, max_restarts=args.max_restarts, poll=args.poll_seconds,
                    delete_when_done=args.delete_when_done)
        else:
            job = Job(name=args.name, project=args.project, zone=args.zone, accelerator="", provisioning="",
                      runtime_version="", workdir="", config="", train_args=())
            if args.action == "status":
                print(g.state(job))
            else:
                g.run(delete_cmd(job))
    except LaunchError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

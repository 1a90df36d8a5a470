"""A Remote Workers API bot for BuildGrid: takes leases, runs REAPI actions, returns ActionResults.

No worker is packaged anywhere we can install from (no buildbox, none in
BuildGrid's wheels), so this is ours. It runs in BuildGrid's own venv
(tools/remote/venv.sh) and uses the protos and CAS client inside that wheel.

One bot holds one lease at a time:
  CreateBotSession (advertising OSFamily, and gpu=cuda or gpu=none) ->
  UpdateBotSession long-polls for a lease -> the action runs in a per-action
  directory (input root fetched from CAS) while the bot keeps heart-beating ->
  outputs, stdout and stderr go to CAS -> the lease is COMPLETED with the
  ActionResult packed in it. Every finished action is one JSON line in the
  audit log: a "start" line when it begins and a "done" line with the exit code
and times when it ends (bot id, gpu, lease id, the test target, argv head).

A bot killed mid-action loses nothing: BuildGrid expires its session after
`bot-session-keepalive-timeout` and hands the job to another bot.

  python tools/remote/bot.py --server grpc://127.0.0.1:50051 --bot-id cpu-1 \\
      --work-dir /tmp/bot-cpu-1 --audit-log /tmp/audit.jsonl [--gpu [--test_double]]
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
from google.protobuf import timestamp_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc, worker_pb2
from buildgrid._protos.google.rpc import code_pb2, status_pb2
from buildgrid.server.client.cas import download, upload

# Lease states and bot status of the Remote Workers API (bots.proto).
PENDING, ACTIVE, COMPLETED = 1, 2, 4
BOT_OK = 1
POLL_TIMEOUT_S = 15.0  # long-poll deadline; BuildGrid waits 0.8 x this for a job
HEARTBEAT_S = 2.0  # UpdateBotSession period while an action runs


def parse_args(argv):
    """Command-line flags of the bot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="grpc://127.0.0.1:50051", help="BuildGrid endpoint (grpc://host:port)")
    p.add_argument("--instance", default="main", help="REAPI instance name")
    p.add_argument("--bot-id", required=True, help="unique id of this bot")
    p.add_argument("--work-dir", required=True, help="where per-action directories are made")
    p.add_argument("--audit-log", required=True, help="JSON-lines file: one line per finished action")
    p.add_argument("--os-family", default="Linux", help="the OSFamily property advertised")
    p.add_argument("--gpu", action="store_true", help="advertise gpu=cuda (else gpu=none); refuses to start without a GPU")
    p.add_argument("--test_double", "--test-double", dest="test_double", action="store_true",
                   help="with --gpu: start without a GPU (a stand-in for routing tests on CPU machines)")
    return p.parse_args(argv)


def has_gpu():
    """Whether an NVIDIA GPU is visible (a device node and a working nvidia-smi)."""
    if not os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def channel_for(server):
    """An insecure gRPC channel to grpc://host:port (the loopback stack has no TLS)."""
    target = server.removeprefix("grpc://")
    if server.startswith(("grpcs://", "https://")):
        raise SystemExit(f"bot: --server {server}: TLS endpoints are not supported by this bot; use grpc://")
    return grpc.insecure_channel(target)


def bot_session(args):
    """The BotSession we register: one primary device carrying the routing properties."""
    props = [worker_pb2.Device.Property(key="OSFamily", value=args.os_family)]
    props.append(worker_pb2.Device.Property(key="gpu", value="cuda" if args.gpu else "none"))
    worker = worker_pb2.Worker(devices=[worker_pb2.Device(handle=args.bot_id, properties=props)])
    return bots_pb2.BotSession(bot_id=args.bot_id, status=BOT_OK, worker=worker)


def _now():
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _make_output_parents(root, command):
    """REAPI: the worker creates the parent directory of every declared output."""
    paths = list(command.output_paths) or list(command.output_files) + list(command.output_directories)
    for rel in paths:
        os.makedirs(os.path.dirname(os.path.join(root, command.working_directory, rel)), exist_ok=True)


def _upload_outputs(uploader, root, command, result):
    """Uploads the declared outputs that exist into `result` (files, then directories)."""
    cwd = os.path.join(root, command.working_directory)
    files = list(command.output_files)
    dirs = list(command.output_directories)
    if command.output_paths:  # REAPI v2.1: one list, kind decided by what is on disk
        files = [p for p in command.output_paths if not os.path.isdir(os.path.join(cwd, p))]
        dirs = [p for p in command.output_paths if os.path.isdir(os.path.join(cwd, p))]
    for rel in files:
        path = os.path.join(cwd, rel)
        if os.path.isfile(path):
            digest = uploader.upload_file(path)
            result.output_files.add(path=rel, digest=digest, is_executable=os.access(path, os.X_OK))
    for rel in dirs:
        path = os.path.join(cwd, rel)
        if os.path.isdir(path):
            result.output_directories.add(path=rel, tree_digest=uploader.upload_tree(path))


def _kill_tree(pid):
    """SIGKILLs `pid` and its descendants (Linux /proc). The action stays in the bot's
    process group, so stopping the bot (tools/remote/down) also stops what it runs."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for children in (pathlib.Path("/proc") / str(p) / "task").glob("*/children"):
            try:
                todo.extend(int(c) for c in children.read_text().split())
            except OSError:
                pass
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Bot:
    """One bot session: poll for a lease, run it, report it, repeat."""

    def __init__(self, args):
        self.args = args
        self.channel = channel_for(args.server)
        self.stub = bots_pb2_grpc.BotsStub(self.channel)
        self.stop = threading.Event()
        os.makedirs(args.work_dir, exist_ok=True)

    def update(self, session, timeout):
        """UpdateBotSession; returns the server's view of the session."""
        request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
        return self.stub.UpdateBotSession(request, timeout=timeout)

    def serve(self):
        """Registers, then loops until SIGTERM: long-poll, run, complete."""
        session = self.stub.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent=self.args.instance, bot_session=bot_session(self.args)),
            timeout=POLL_TIMEOUT_S,
        )
        print(f"bot {self.args.bot_id}: session {session.name} (gpu={self.args.gpu})", flush=True)
        while not self.stop.is_set():
            lease = next((l for l in session.leases if l.state in (PENDING, ACTIVE)), None)
            if lease is None:
                try:
                    session = self.update(session, POLL_TIMEOUT_S)
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        print(f"bot {self.args.bot_id}: UpdateBotSession: {err.code().name}", flush=True)
                        time.sleep(1.0)
                continue
            session = self.run_lease(session, lease)

    def run_lease(self, session, lease):
        """Marks the lease ACTIVE, runs it with heartbeats, and sends it back COMPLETED."""
        lease.state = ACTIVE
        outcome = {}
        cancelled = threading.Event()
        worker = threading.Thread(target=lambda: outcome.update(self.execute(lease, cancelled)), daemon=True)
        worker.start()
        while worker.is_alive():
            try:
                session = self.update(session, POLL_TIMEOUT_S)
                if not any(l.id == lease.id for l in session.leases) and not cancelled.is_set():
                    print(f"bot {self.args.bot_id}: lease {lease.id} was cancelled by the server", flush=True)
                    cancelled.set()  # execute() kills the action
            except grpc.RpcError as err:
                print(f"bot {self.args.bot_id}: heartbeat: {err.code().name}", flush=True)
            worker.join(HEARTBEAT_S)
        # The heartbeat replies replaced `session`: put our completed lease back in it.
        kept = [l for l in session.leases if l.id != lease.id]
        done = bots_pb2.Lease(id=lease.id, payload=lease.payload, state=COMPLETED, status=outcome["status"])
        if "result" in outcome:
            done.result.Pack(outcome["result"])
        del session.leases[:]
        session.leases.extend(kept + [done])
        for attempt in range(5):
            try:
                return self.update(session, POLL_TIMEOUT_S)
            except grpc.RpcError as err:
                print(f"bot {self.args.bot_id}: completing {lease.id}: {err.code().name}", flush=True)
                time.sleep(1.0 + attempt)
        raise SystemExit(f"bot {self.args.bot_id}: could not report lease {lease.id}")

    def execute(self, lease, cancelled):
        """Runs the lease's action (killed if `cancelled` is set); returns {'status': Status, 'result': ActionResult}."""
        action = re_pb2.Action()
        if lease.payload.Is(re_pb2.Action.DESCRIPTOR):
            lease.payload.Unpack(action)
            action_digest = None
        else:
            action_digest = re_pb2.Digest()
            lease.payload.Unpack(action_digest)
        action_dir = os.path.join(self.args.work_dir, lease.id.replace("/", "_"))
        shutil.rmtree(action_dir, ignore_errors=True)
        root = os.path.join(action_dir, "root")
        os.makedirs(root)
        meta = re_pb2.ExecutedActionMetadata(worker=self.args.bot_id)
        record = {"bot": self.args.bot_id, "gpu": self.args.gpu, "lease": lease.id, "start": time.time()}
        try:
            with download(self.channel, instance=self.args.instance) as dl:
                if action_digest is not None:
                    dl.get_message(action_digest, action)
                command = dl.get_message(action.command_digest, re_pb2.Command())
                meta.input_fetch_start_timestamp.CopyFrom(_now())
                dl.download_directory(action.input_root_digest, root)
                meta.input_fetch_completed_timestamp.CopyFrom(_now())
            env = {v.name: v.value for v in command.environment_variables}
            record["target"] = env.get("TEST_TARGET", "")
            record["argv"] = list(command.arguments[:3])
            self.audit(dict(record, event="start"))
            _make_output_parents(root, command)
            timeout = action.timeout.seconds or None
            meta.execution_start_timestamp.CopyFrom(_now())
            with open(os.path.join(action_dir, "stdout"), "wb") as out, \
                    open(os.path.join(action_dir, "stderr"), "wb") as err:
                proc = subprocess.Popen(list(command.arguments), cwd=os.path.join(root, command.working_directory),
                                        env=env, stdout=out, stderr=err)
                deadline = time.monotonic() + timeout if timeout else None
                status = status_pb2.Status(code=code_pb2.OK)
                while proc.poll() is None:
                    if cancelled.is_set() or (deadline and time.monotonic() > deadline):
                        _kill_tree(proc.pid)
                        status = (status_pb2.Status(code=code_pb2.CANCELLED, message="lease cancelled by the server")
                                  if cancelled.is_set() else
                                  status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED,
                                                    message=f"action ran past its {timeout} s timeout"))
                        break
                    cancelled.wait(0.2)
                exit_code = proc.wait()
            meta.execution_completed_timestamp.CopyFrom(_now())
            result = re_pb2.ActionResult(exit_code=exit_code)
            meta.output_upload_start_timestamp.CopyFrom(_now())
            with upload(self.channel, instance=self.args.instance) as up:
                _upload_outputs(up, root, command, result)
                result.stdout_digest.CopyFrom(up.upload_file(os.path.join(action_dir, "stdout"), queue=False))
                result.stderr_digest.CopyFrom(up.upload_file(os.path.join(action_dir, "stderr"), queue=False))
            meta.output_upload_completed_timestamp.CopyFrom(_now())
            result.execution_metadata.CopyFrom(meta)
            record.update(exit_code=exit_code, status=code_pb2.Code.Name(status.code))
            return {"status": status, "result": result}
        except Exception as exc:  # a broken input or CAS error fails this action, not the bot
            record.update(exit_code=None, status="INTERNAL", error=repr(exc))
            return {"status": status_pb2.Status(code=code_pb2.INTERNAL, message=f"bot {self.args.bot_id}: {exc!r}")}
        finally:
            record["end"] = time.time()
            self.audit(dict(record, event="done"))
            shutil.rmtree(action_dir, ignore_errors=True)

    def audit(self, record):
        """Appends one JSON line to the audit log (one short write: lines of concurrent bots do not mix)."""
        with open(self.args.audit_log, "a") as log:
            log.write(json.dumps(record) + "\n")


def main(argv=None):
    """Entry point: check the GPU claim, then serve until SIGTERM."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.test_double and not args.gpu:
        raise SystemExit("bot: --test_double only makes sense with --gpu")
    if args.gpu and not args.test_double and not has_gpu():
        raise SystemExit(f"bot {args.bot_id}: --gpu but no GPU here (no /dev/nvidia0 or nvidia-smi -L failed); "
                         "pass --test_double to run a stand-in GPU bot for routing tests")
    bot = Bot(args)
    signal.signal(signal.SIGTERM, lambda *_: bot.stop.set())
    bot.serve()


if __name__ == "__main__":
    main()

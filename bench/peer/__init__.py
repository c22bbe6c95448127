"""Side by side with ThingsBoard IoT Gateway 3.8.5 (the peer) on the same Modbus workload (``make bench-peer``).

What runs, and what each side is given (it MUST stay the same for both, or the docs must say otherwise):

- one Modbus TCP slave on 127.0.0.1 (``bench.modbus_dataset``: the realistic dataset's float32 tags,
  contiguous holding registers, high word first, values changing every 100 ms), a fresh one per run;
- each gateway polls all tags every 100 ms with block reads of 124 registers (62 float32 each): ours through
  its planner (``max_read_registers`` 125 rounds down to whole floats), ThingsBoard through wide-range tags
  (``address: "a-b"``, ``maxRegistersPerRequest: 124``), its only way to read a block;
- each publishes QoS 1 over MQTT with mutual TLS to the same Mosquitto (``simulators.iot_core``), ours in
  its JSON v1 batches on ``dt/<thing>/plant``, ThingsBoard on ``v1/gateway/telemetry``, messages of at most
  ~126 KB (ours: ``max_message_bytes``; ThingsBoard: its client's 80 % of the ``maxPayloadSize`` we answer,
  131,072, by its own size estimate);
- each gateway process is pinned to CPU 1 (``taskset``); the simulator, Mosquitto and this process (the
  subscriber) share CPU 0. CPU is user + system time of the gateway process and its descendants, from
  /proc; points, bytes and latency are counted at a subscriber on the broker that decodes each side's
  payload (latency: the poll time written in the payload against arrival at the subscriber);
- runs alternate (ours, peer, ours, peer ...) at each offered load, ``--rounds`` times.

Ours runs with its defaults (disk buffer, fsync per group commit) and IoT Core flow control off (a CPU
comparison: with it on, one connection is capped near 512 KiB/s). ThingsBoard runs with its shipped storage
default (``memory``: no disk, no fsync), statistics, remote configuration, remote shell, gRPC and device
activity checks off, no rate limits (its session-limits RPC is answered with none), and a loopback guard
(``tb_launch.py``) so neither its hourly update check nor a run-time ``pip install`` can leave 127.0.0.0/8.

Modules: ``configs`` (both sides' configuration files), ``subscriber`` (counting subscriber and the
session-limits responder), ``procs`` (processes, CPU and RSS from /proc), ``tb_launch`` (run by the peer's
own interpreter, never imported here), ``__main__`` (the runs and the report).
"""

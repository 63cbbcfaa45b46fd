"""Child process for test_crash.py: writes transactions and queue rows until it is SIGKILLed.

Each stdout line is printed only after the commit it reports has returned:
  S <local_id> <seq>   transaction begun and its StartTransaction queued (one commit)
  E <local_id> <seq>   periodic MeterValues queued (with the last meter update, one commit)
  a <seq>              about to acknowledge it (it may be gone after a kill)
  A <seq>              a periodic MeterValues acknowledged
  P <local_id> <seq>   stop recorded and StopTransaction queued (one commit)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from chargepoint.clock import EventTime
from chargepoint.store import Store


def main(state_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(Path(state_dir))
    boot = f"boot-{seed}"
    mono = 0.0
    meter_wh = 0.0
    while True:
        mono += 1.0
        t = EventTime(boot, mono, None)
        with store.transaction():
            local_id = store.transactions.begin(connector_id=1, id_tag="TAG", start_meter_wh=meter_wh, start_time=t)
            seq = store.queue.enqueue("StartTransaction", {"lid": local_id}, local_tx_id=local_id, kind="start",
                                      event_time=t)
        print(f"S {local_id} {seq}", flush=True)
        for _ in range(rng.randint(1, 8)):
            mono += 10.0
            meter_wh += 27.5
            t = EventTime(boot, mono, None)
            with store.transaction():
                seq = store.queue.enqueue("MeterValues", {"lid": local_id, "wh": meter_wh}, local_tx_id=local_id,
                                          kind="meter_periodic", event_time=t)
                store.transactions.update_last_meter(local_id, meter_wh, t)
            print(f"E {local_id} {seq}", flush=True)
            if rng.random() < 0.4:
                oldest = next((m for m in store.queue.items() if m.kind == "meter_periodic"), None)
                if oldest is not None:
                    print(f"a {oldest.seq}", flush=True)
                    assert store.queue.ack(oldest.seq)
                    print(f"A {oldest.seq}", flush=True)
        mono += 1.0
        t = EventTime(boot, mono, None)
        for _ in range(2):  # the second attempt must be refused: never two stops
            stop_seq = None
            with store.transaction():
                if store.transactions.mark_stop_queued(local_id, stop_meter_wh=meter_wh, stop_time=t, reason="Local"):
                    stop_seq = store.queue.enqueue("StopTransaction", {"lid": local_id}, local_tx_id=local_id,
                                                   kind="stop", event_time=t)
            if stop_seq is not None:  # reported only once the commit has returned
                print(f"P {local_id} {stop_seq}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

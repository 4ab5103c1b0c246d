// Opens a compat machine on a SQLite store and exits without closing it (the official package
// aborts the process with code 134 here; ours exits normally).
import { DeviceId, OlmMachine, UserId } from '../../src/compat/index';

void (async () => {
  const machine = await OlmMachine.initialize(new UserId('@exit:example.org'), new DeviceId('EXIT'), process.argv[2]!, '');
  await machine.outgoingRequests();
  process.stdout.write('opened\n');
})();

import '../capabilities/transports/ssh.js';
import '../capabilities/transports/mesh.js';
import '../capabilities/transports/vm.js';
/**
 * The runtime with every transport loaded (the launcher, tests, benches): see runtime-core.ts. The CLI
 * imports runtime-core.ts and loads only the transports a command needs.
 */
export { loadTransports, openRuntime, type Runtime } from './runtime-core.js';

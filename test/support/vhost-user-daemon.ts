// Runs a tsvisor command (`vhost-user-blk ...`, `vhost-user-net ...`) from the tree
// being tested (the tests' output directory), so a test can put a daemon in a
// process of its own, as users do. Without arguments it does nothing: the test
// runner runs every file under dist/test, this one included.
import { main } from '../../src/cli/main.js';

if (process.argv.length > 2) process.exitCode = await main(process.argv.slice(2));

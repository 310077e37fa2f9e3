// Runs `tsvisor vhost-user-blk` with the given arguments from the tree being
// tested (the tests' output directory), so a test can put the daemon in a process
// of its own, as users do.
import { vhostUserBlkCommand } from '../../src/cli/vhost-user.js';

process.exitCode = await vhostUserBlkCommand(process.argv.slice(2));

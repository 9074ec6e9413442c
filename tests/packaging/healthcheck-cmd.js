// Prints the Dockerfile's HEALTHCHECK command (exec form), one NUL-terminated argument each, so
// scripts/package-test.sh can run the very same command against the installed server.
import { parseDockerfile, read, runtimeOf } from './lib.js';

for (const arg of runtimeOf(parseDockerfile(read('Dockerfile'))).healthcheck) process.stdout.write(`${arg}\0`);

#!/usr/bin/env node
import { cli } from '../dist/src/cli/main.js';

void cli(process.argv.slice(2));

/**
 * Name rules shared by devices and VMs, in a file with no imports but zod, so the CLI's command
 * declarations can use them without loading the manifest code (test/cli-start.test.ts).
 */
import { z } from 'zod';

export const DEVICE_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
export const DeviceNameSchema = z.string().regex(DEVICE_NAME, 'must be 1-32 characters of a-z, 0-9 and -, not starting with -');

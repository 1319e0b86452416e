/**
 * A dataset scan in a worker thread (bundled as dist/datasetScanWorker.js): it reads and renders every row of one
 * file while the thread that started it loads the template's tokenizer, then posts the scan (plain data) and exits.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { answerScanRequest, type ScanRequest } from './audits';

void answerScanRequest(workerData as ScanRequest).then((reply) => parentPort?.postMessage(reply));

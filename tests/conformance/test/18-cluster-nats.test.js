// 18. The cluster contract (test/cluster-contract.js) over the real NATS server on 127.0.0.1:4222.
import { clusterContract } from './cluster-contract.js';

clusterContract({ driver: 'nats', url: 'nats://127.0.0.1:4222' });

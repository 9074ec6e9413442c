// 19. The cluster contract (test/cluster-contract.js) over the real Redis server on 127.0.0.1:6379.
import { clusterContract } from './cluster-contract.js';

clusterContract({ driver: 'redis', url: 'redis://127.0.0.1:6379' });

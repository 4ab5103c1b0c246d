export * from 'matrix-crypto-node/compat';

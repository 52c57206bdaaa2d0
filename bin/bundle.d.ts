export declare const ROOT: string;
export declare const DIST: string;
export declare const stampFile: string;
export declare const sourceStamp: (root?: string) => string;
export declare const writtenStamp: () => string | undefined;
export declare const freshBundle: () => string | undefined;

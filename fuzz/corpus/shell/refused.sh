eval {x}; sh -c {x}; trap {x} EXIT; let n={x}; PS4={x}; read {x}; ${!x}; printf -v {x} %s 1

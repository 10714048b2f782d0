from gateway.passwords import hash_password, verify_password


def test_a_hash_verifies_its_password_only() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert hash_password("correct horse") != stored  # salted


def test_malformed_or_costly_hashes_are_refused_not_raised() -> None:
    assert not verify_password("x", "")
    assert not verify_password("x", "md5$abc")
    assert not verify_password("x", "scrypt$16384$8$1$!!$!!")
    good = hash_password("x").split("$")
    good[1] = str(1 << 30)  # a crafted file must not make a check allocate gigabytes
    assert not verify_password("x", "$".join(good))

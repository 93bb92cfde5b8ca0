//! Detokenization from the tokenizer's `vocab.json` (piece → id): special tokens are
//! dropped, pieces concatenated, and SentencePiece's word marker `▁` becomes a space, as
//! `Speech2TextTokenizer.decode(ids, skip_special_tokens=True)` does.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum VocabError {
    #[error("vocab.json is not a JSON object of piece to id: {0}")]
    Parse(String),
    #[error("vocab.json maps both `{first}` and `{second}` to id {id}")]
    Duplicate { id: u32, first: String, second: String },
}

const SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pieces: Vec<Option<String>>,
    special: Vec<bool>,
}

impl Vocab {
    /// Parses `vocab.json`; `special_ids` (bos, pad, eos) are skipped when decoding, as are
    /// the pieces `<s> <pad> </s> <unk>`.
    pub fn from_json(bytes: &[u8], special_ids: &[u32]) -> Result<Self, VocabError> {
        let map: BTreeMap<String, u32> = serde_json::from_slice(bytes).map_err(|e| VocabError::Parse(e.to_string()))?;
        let size = map.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        let mut pieces: Vec<Option<String>> = vec![None; size];
        let mut special = vec![false; size];
        for (piece, &id) in &map {
            let slot = &mut pieces[id as usize];
            if let Some(first) = slot {
                return Err(VocabError::Duplicate { id, first: first.clone(), second: piece.clone() });
            }
            special[id as usize] = SPECIALS.contains(&piece.as_str());
            *slot = Some(piece.clone());
        }
        for &id in special_ids {
            if let Some(s) = special.get_mut(id as usize) {
                *s = true;
            }
        }
        Ok(Self { pieces, special })
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Text of `ids`; ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        for &id in ids {
            let i = id as usize;
            if self.special.get(i).copied().unwrap_or(true) {
                continue;
            }
            if let Some(Some(p)) = self.pieces.get(i) {
                text.push_str(p);
            }
        }
        text.replace('\u{2581}', " ").trim().to_string()
    }

    /// A synthetic vocabulary of `size` entries for random models: the four specials, then
    /// letters and short syllables, some with the word marker.
    pub fn synthetic_json(size: usize) -> String {
        let mut map = serde_json::Map::new();
        for (i, s) in SPECIALS.iter().enumerate().take(size) {
            map.insert((*s).to_string(), i.into());
        }
        let letters: Vec<char> = "etaoinshrdlucmfwypvbgkjqxz'".chars().collect();
        let base = letters.len();
        let mut id = SPECIALS.len();
        let mut len = 1u32;
        let mut n = 0usize;
        while id < size {
            // All strings of `len` letters, first with the word marker, then without.
            let per_kind = base.pow(len);
            if n == 2 * per_kind {
                len += 1;
                n = 0;
                continue;
            }
            let mut rest = n % per_kind;
            let mut piece = String::from(if n < per_kind { "\u{2581}" } else { "" });
            for _ in 0..len {
                piece.push(letters[rest % base]);
                rest /= base;
            }
            map.insert(piece, id.into());
            id += 1;
            n += 1;
        }
        serde_json::Value::Object(map).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_drops_specials_and_turns_word_markers_into_spaces() {
        let v = Vocab::from_json(
            "{\"<s>\":0,\"<pad>\":1,\"</s>\":2,\"<unk>\":3,\"▁he\":4,\"llo\":5,\"▁world\":6}".as_bytes(),
            &[0, 1, 2],
        )
        .unwrap();
        assert_eq!(v.decode(&[2, 4, 5, 6, 3, 2]), "hello world");
        assert_eq!(v.decode(&[99]), "");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let e = Vocab::from_json(br#"{"a":0,"b":0}"#, &[]).unwrap_err();
        assert!(matches!(e, VocabError::Duplicate { id: 0, .. }));
    }

    #[test]
    fn synthetic_vocab_has_the_requested_size() {
        for size in [4, 96, 10_000] {
            let v = Vocab::from_json(Vocab::synthetic_json(size).as_bytes(), &[0, 1, 2]).unwrap();
            assert_eq!(v.len(), size);
        }
    }
}
